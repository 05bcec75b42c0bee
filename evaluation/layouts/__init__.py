"""One reader per public dataset layout: CheXpert, MIMIC-CXR(-JPG), Indiana/OpenI report XML.

`evaluation.manifest.read_manifest` picks the reader (and reads our own CSV layout itself);
`cells` holds what the readers share: CSV reading, label/age/sex cells, image paths, case ids.
"""
