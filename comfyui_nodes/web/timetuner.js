// Shows TimeTuner's sampling warnings (a run whose sigmas don't match the applied tuned set) as a toast.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

app.registerExtension({
  name: "timetuner.warnings",
  setup() {
    api.addEventListener("timetuner.warning", (event) => {
      const detail = event.detail?.message ?? String(event.detail);
      if (app.extensionManager?.toast) {
        app.extensionManager.toast.add({ severity: "warn", summary: "TimeTuner", detail, life: 10000 });
      } else {
        console.warn("TimeTuner:", detail);
      }
    });
  },
});
