// Registry Sampler: show only the chosen sampler's own options, set to that sampler's declared defaults when the
// sampler changes (the table comes with the node's definition: sampler_name's "timetuner_options").
import { app } from "../../scripts/app.js";

function optionTable(nodeData) {
  const spec = nodeData?.input?.required?.sampler_name;
  const info = Array.isArray(spec) ? spec.find((part) => part && typeof part === "object" && !Array.isArray(part)) : spec;
  return info?.timetuner_options ?? {};
}

function show(widget, visible) {
  if (widget.timetunerType === undefined) {
    widget.timetunerType = widget.type;
    widget.timetunerSize = widget.computeSize;
  }
  widget.hidden = !visible;
  widget.type = visible ? widget.timetunerType : "timetuner-hidden";
  widget.computeSize = visible ? widget.timetunerSize : () => [0, -4];
}

app.registerExtension({
  name: "timetuner.registrySamplerOptions",
  beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData?.name !== "TimeTunerRegistrySampler") return;
    const table = optionTable(nodeData);
    const every = new Set(Object.values(table).flatMap((options) => Object.keys(options)));
    const created = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = created?.apply(this, arguments);
      const chooser = this.widgets?.find((w) => w.name === "sampler_name");
      if (!chooser) return result;
      const update = (reset) => {
        const own = table[chooser.value] ?? {};
        for (const widget of this.widgets) {
          if (!every.has(widget.name)) continue;
          const used = widget.name in own;
          show(widget, used);
          if (used && reset) widget.value = own[widget.name];
        }
        this.setSize?.([this.size[0], this.computeSize()[1]]);
      };
      const callback = chooser.callback;
      chooser.callback = function () {
        const out = callback?.apply(this, arguments);
        update(true);
        return out;
      };
      const configure = this.onConfigure;
      this.onConfigure = function () {
        const out = configure?.apply(this, arguments);
        update(false);
        return out;
      };
      update(true);
      return result;
    };
  },
});
