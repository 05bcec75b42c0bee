// Review page: zoom and window/level on the radiograph (canvas), no build step, no dependencies.
// The page works without this script: the plain <img> stays visible and the form posts as is.
(function () {
  "use strict";
  var img = document.getElementById("radiograph");
  var canvas = document.getElementById("radiograph-canvas");
  var controls = document.getElementById("viewer-controls");
  if (!img || !canvas || !controls) { return; }
  var zoom = document.getElementById("zoom");
  var width = document.getElementById("window-width");
  var level = document.getElementById("window-level");
  var reset = document.getElementById("viewer-reset");
  var original = null;   // ImageData of the 8-bit rendition, (H, W) RGBA with R = G = B

  function show(output, text) { document.getElementById(output).textContent = text; }

  function applyWindow() {
    if (!original) { return; }
    var w = Number(width.value), l = Number(level.value);
    var low = l - w / 2, lut = new Uint8ClampedArray(256);
    for (var v = 0; v < 256; v++) { lut[v] = Math.round(((v - low) / w) * 255); }   // linear window
    var ctx = canvas.getContext("2d");
    var out = ctx.createImageData(original.width, original.height);
    var src = original.data, dst = out.data;
    for (var i = 0; i < src.length; i += 4) {
      var g = lut[src[i]];
      dst[i] = g; dst[i + 1] = g; dst[i + 2] = g; dst[i + 3] = 255;
    }
    ctx.putImageData(out, 0, 0);
    show("window-value", String(w));
    show("level-value", String(l));
  }

  function applyZoom() {
    var z = Number(zoom.value);
    canvas.style.width = (z * 100) + "%";
    img.style.width = (z * 100) + "%";
    show("zoom-value", z + "×");
  }

  function start() {
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    var ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(img, 0, 0);
    original = ctx.getImageData(0, 0, canvas.width, canvas.height);
    // the canvas takes the image's place; the image keeps its alt text for assistive technology
    canvas.setAttribute("role", "img");
    canvas.setAttribute("aria-label", img.alt);
    canvas.removeAttribute("aria-hidden");
    canvas.hidden = false;
    img.hidden = true;
    controls.hidden = false;
    applyWindow();
    applyZoom();
  }

  zoom.addEventListener("input", applyZoom);
  width.addEventListener("input", applyWindow);
  level.addEventListener("input", applyWindow);
  reset.addEventListener("click", function () {
    zoom.value = "1"; width.value = "255"; level.value = "128";
    applyZoom(); applyWindow();
  });
  if (img.complete && img.naturalWidth) { start(); } else { img.addEventListener("load", start); }
}());
