// A scan page's slice viewer: NiiVue over the downsampled scan and relevance that the preview script assigned.
"use strict";
(async function () {
  const status = document.getElementById("viewer-status");
  const data = window.MRI_LRP_PREVIEW;
  function fail(message) {
    status.textContent = message;
    document.body.dataset.viewer = "error";
  }
  if (!data) return fail("The viewer data did not load (its file is missing).");
  if (!window.niivue) return fail("The viewer library did not load.");
  const probe = document.createElement("canvas");
  if (!probe.getContext("webgl2")) return fail("This browser has no WebGL2, so the viewer cannot draw; the overlays above show the same maps.");
  try {
    const nv = new niivue.Niivue({ backColor: [0, 0, 0, 1], crosshairColor: [0.2, 0.8, 0.2, 0.6], isColorbar: true,
                                   show3Dcrosshair: false, dragAndDropEnabled: false,
                                   isOrientationTextVisible: data.world !== false });  // image files: no sides
    await nv.attachTo("viewer");
    const peak = data.peak > 0 ? data.peak : 1;
    const top = data.display > 0 ? data.display : peak;
    const scan = await niivue.NVImage.loadFromBase64({ base64: data.scan, name: "scan.nii.gz", colormap: "gray",
                                                      cal_min: 0, cal_max: 255, colorbarVisible: false });
    const rel = await niivue.NVImage.loadFromBase64({
      base64: data.relevance, name: "relevance.nii.gz", colormap: "red", colormapNegative: "blue",
      cal_min: 0.05 * top, cal_max: top, cal_minNeg: -top, cal_maxNeg: -0.05 * top, opacity: 0.8 });
    nv.addVolume(scan);
    nv.addVolume(rel);
    const planes = { axial: nv.sliceTypeAxial, coronal: nv.sliceTypeCoronal, sagittal: nv.sliceTypeSagittal,
                     multi: nv.sliceTypeMultiplanar };
    let plane = data.shape[2] === 1 ? "axial" : "multi";
    const axisOf = { axial: 2, coronal: 1, sagittal: 0, multi: 2 };
    const slider = document.getElementById("slice");
    function show(name) {
      plane = name;
      nv.setSliceType(planes[name]);
      for (const b of document.querySelectorAll("[data-plane]")) b.setAttribute("aria-pressed", String(b.dataset.plane === name));
      slider.value = String(Math.round(nv.scene.crosshairPos[axisOf[name]] * 1000));
    }
    for (const b of document.querySelectorAll("[data-plane]")) b.addEventListener("click", () => show(b.dataset.plane));
    slider.addEventListener("input", () => {
      const pos = nv.scene.crosshairPos.slice();
      pos[axisOf[plane]] = Number(slider.value) / 1000;
      nv.scene.crosshairPos = pos;
      nv.drawScene();
    });
    document.getElementById("opacity").addEventListener("input", (e) => nv.setOpacity(1, Number(e.target.value) / 100));
    if (data.focus_mm && typeof nv.mm2frac === "function") {  // start at the hottest spot, not the centre
      nv.scene.crosshairPos = nv.mm2frac(data.focus_mm);
      nv.drawScene();
    }
    show(plane);
    status.textContent = "preview grid " + data.shape.join("×") + " (blocks of " + data.block +
      "³ voxels); colours saturate at |relevance| " + top.toPrecision(3) + " (peak " + peak.toPrecision(3) + ")";
    document.body.dataset.viewer = "ready";
  } catch (e) {
    console.error(e);
    fail("The viewer could not draw this scan: " + e);
  }
})();
