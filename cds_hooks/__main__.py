from cds_hooks.cli import main

main()
