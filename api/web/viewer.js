// The image viewer: original and Grad-CAM side by side, linked zoom and pan (wheel, drag,
// buttons, keyboard), the heatmap laid over the original with an opacity slider and a toggle.

import { h } from "./dom.js";

const MIN_ZOOM = 1;
const MAX_ZOOM = 8;
const STEP = 1.25;
const PAN_STEP = 40;

// Kept across scans: a reader who prefers 30% opacity should not reset it on every case.
const prefs = { opacity: 45, heatOn: true };

export class Viewer {
  /** @param {{original: string, heat: string|null, onImageError: () => void}} urls */
  constructor({ original, heat, onImageError }) {
    this.zoom = 1;
    this.x = 0;
    this.y = 0;
    this.layers = [];
    this.stages = [];
    this.element = this.#build(original, heat, onImageError);
    this.#apply();
  }

  #build(original, heat, onImageError) {
    const fail = () => onImageError && onImageError();
    const originalImg = h("img", { src: original, alt: "Original MRI slice", draggable: "false", onerror: fail });
    const originalStage = this.#stage("Original slice", originalImg);

    this.baseImg = h("img", { src: original, alt: "", draggable: "false" });
    this.heatImg = heat
      ? h("img", { class: "heat", src: heat, alt: "Grad-CAM heatmap", draggable: "false", onerror: fail })
      : null;
    const heatStage = heat ? this.#stage("Slice with Grad-CAM heatmap", this.baseImg, this.heatImg) : null;

    this.zoomLabel = h("output", { class: "zoom-level", "aria-live": "polite" }, "100%");
    this.opacityOut = h("output", { class: "opacity-value", for: "heat-opacity" }, `${prefs.opacity}%`);
    this.slider = h("input", {
      type: "range", id: "heat-opacity", min: "0", max: "100", step: "1", value: String(prefs.opacity),
      "aria-valuetext": `${prefs.opacity}% heatmap opacity`,
      oninput: () => this.setOpacity(Number(this.slider.value)),
    });
    this.toggle = h("input", {
      type: "checkbox", id: "heat-toggle", role: "switch", checked: prefs.heatOn,
      onchange: () => this.setHeat(this.toggle.checked),
    });

    const toolbar = h("div", { class: "viewer-toolbar", role: "toolbar", "aria-label": "Image tools" },
      h("div", { class: "tool-group" },
        h("button", { type: "button", class: "btn btn-tool", "aria-label": "Zoom out", title: "Zoom out (−)",
          onclick: () => this.zoomBy(1 / STEP) }, "−"),
        this.zoomLabel,
        h("button", { type: "button", class: "btn btn-tool", "aria-label": "Zoom in", title: "Zoom in (+)",
          onclick: () => this.zoomBy(STEP) }, "+"),
        h("button", { type: "button", class: "btn btn-tool btn-text", title: "Fit to view (0)",
          onclick: () => this.reset() }, "Fit")),
      heat ? h("div", { class: "tool-group heat-tools" },
        h("label", { class: "switch", for: "heat-toggle" }, this.toggle,
          h("span", { class: "switch-track", "aria-hidden": "true" }), h("span", {}, "Heatmap")),
        h("label", { for: "heat-opacity", class: "slider-label" }, "Opacity"),
        this.slider, this.opacityOut) : null);

    const legend = h("div", { class: "legend", "aria-hidden": "true" },
      h("span", {}, "Low"), h("span", { class: "legend-bar" }), h("span", {}, "High attention"));

    // Without a heatmap (the input gate refused the image) there is only the original to show.
    const panes = h("div", { class: heat ? "viewer-panes" : "viewer-panes single" },
      h("figure", { class: "pane" }, originalStage, h("figcaption", {}, "Original")),
      heat ? h("figure", { class: "pane" }, heatStage, h("figcaption", {}, "Grad-CAM overlay", legend)) : null);

    this.setOpacity(prefs.opacity);
    this.setHeat(prefs.heatOn);
    return h("div", { class: "viewer" }, toolbar, panes,
      h("p", { class: "muted small viewer-help" },
        heat ? "Scroll or use + and − to zoom, drag or use the arrow keys to pan; both views move together."
          : "Scroll or use + and − to zoom, drag or use the arrow keys to pan."));
  }

  #stage(label, ...images) {
    const layer = h("div", { class: "layer" }, ...images.filter(Boolean));
    const stage = h("div", {
      class: "stage", tabindex: "0", role: "img",
      "aria-label": `${label}. Plus and minus zoom, arrow keys pan, zero fits.`,
    }, layer);
    this.layers.push(layer);
    this.stages.push(stage);
    stage.addEventListener("wheel", (e) => this.#onWheel(e, stage), { passive: false });
    stage.addEventListener("pointerdown", (e) => this.#onDrag(e, stage));
    stage.addEventListener("keydown", (e) => this.#onKey(e));
    stage.addEventListener("dblclick", () => this.reset());
    return stage;
  }

  setOpacity(value) {
    prefs.opacity = Math.max(0, Math.min(100, Math.round(value)));
    this.slider.value = String(prefs.opacity);
    this.slider.setAttribute("aria-valuetext", `${prefs.opacity}% heatmap opacity`);
    this.opacityOut.textContent = `${prefs.opacity}%`;
    if (this.heatImg) this.heatImg.style.opacity = String(prefs.opacity / 100);
  }

  setHeat(on) {
    prefs.heatOn = Boolean(on);
    this.toggle.checked = prefs.heatOn;
    this.slider.disabled = !prefs.heatOn;
    if (this.heatImg) this.heatImg.hidden = !prefs.heatOn;
  }

  /** Zoom by `factor` around a point of the stage (its centre by default). */
  zoomBy(factor, cx = null, cy = null) {
    const rect = this.stages[0].getBoundingClientRect();
    const px = cx ?? rect.width / 2;
    const py = cy ?? rect.height / 2;
    const next = Math.max(MIN_ZOOM, Math.min(MAX_ZOOM, this.zoom * factor));
    const ratio = next / this.zoom;
    // Keep the point under the cursor where it is: t' = p - (p - t) * ratio.
    this.x = px - (px - this.x) * ratio;
    this.y = py - (py - this.y) * ratio;
    this.zoom = next;
    this.#apply();
  }

  panBy(dx, dy) {
    this.x += dx;
    this.y += dy;
    this.#apply();
  }

  reset() {
    this.zoom = 1;
    this.x = 0;
    this.y = 0;
    this.#apply();
  }

  #apply() {
    const rect = this.stages[0]?.getBoundingClientRect();
    if (rect && rect.width) {
      // Never let the image leave the frame: clamp the pan to the zoomed image's edges.
      this.x = Math.min(0, Math.max(rect.width * (1 - this.zoom), this.x));
      this.y = Math.min(0, Math.max(rect.height * (1 - this.zoom), this.y));
    }
    const transform = `translate(${this.x}px, ${this.y}px) scale(${this.zoom})`;
    for (const layer of this.layers) layer.style.transform = transform;
    for (const stage of this.stages) stage.classList.toggle("is-zoomed", this.zoom > 1);
    this.zoomLabel.textContent = `${Math.round(this.zoom * 100)}%`;
  }

  #onWheel(event, stage) {
    event.preventDefault();
    const rect = stage.getBoundingClientRect();
    this.zoomBy(event.deltaY < 0 ? STEP : 1 / STEP, event.clientX - rect.left, event.clientY - rect.top);
  }

  #onDrag(event, stage) {
    if (event.button !== 0) return;
    stage.setPointerCapture(event.pointerId);
    stage.classList.add("is-dragging");
    let lastX = event.clientX;
    let lastY = event.clientY;
    const move = (e) => {
      this.panBy(e.clientX - lastX, e.clientY - lastY);
      lastX = e.clientX;
      lastY = e.clientY;
    };
    const end = () => {
      stage.classList.remove("is-dragging");
      stage.removeEventListener("pointermove", move);
      stage.removeEventListener("pointerup", end);
      stage.removeEventListener("pointercancel", end);
    };
    stage.addEventListener("pointermove", move);
    stage.addEventListener("pointerup", end);
    stage.addEventListener("pointercancel", end);
  }

  #onKey(event) {
    const actions = {
      "+": () => this.zoomBy(STEP), "=": () => this.zoomBy(STEP),
      "-": () => this.zoomBy(1 / STEP), "_": () => this.zoomBy(1 / STEP),
      "0": () => this.reset(),
      ArrowLeft: () => this.panBy(PAN_STEP, 0), ArrowRight: () => this.panBy(-PAN_STEP, 0),
      ArrowUp: () => this.panBy(0, PAN_STEP), ArrowDown: () => this.panBy(0, -PAN_STEP),
    };
    const action = actions[event.key];
    if (!action || event.ctrlKey || event.metaKey || event.altKey) return;
    event.preventDefault();
    action();
  }
}
