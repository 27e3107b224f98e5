// Starting a job from the page: its spec as JSON, begun from a template of its kind (the
// team's newest fitting datasets and checkpoints filled in) or from an earlier job's spec
// ("Run again"). The API checks it and says what is wrong; nothing is created then.

import { ApiError, call, get } from "./api.js";
import { h, note, section } from "./dom.js";

const KINDS = ["pipeline", "coldstart", "sft", "grpo", "eval"];
const TEACHERS = {
  captioner: { engine: "vllm", model: "<multimodal model, e.g. Qwen/Qwen2.5-VL-72B-Instruct>" },
  reasoner: { engine: "vllm", model: "<reasoning model, e.g. deepseek-ai/DeepSeek-R1>" },
};

async function newestDataset(kind) {
  const page = await get("/v1/datasets", { kind, limit: 1 });
  return page.items[0]?.id ?? `<${kind} dataset id>`;
}

async function newestCheckpoint(kind, fallback) {
  const page = await get("/v1/jobs", { kind, status: "succeeded", limit: 1 });
  return page.items[0]?.output?.checkpoint_uri ?? fallback;
}

/** The fields a job of ``kind`` needs, the rest left to the paper's defaults. */
async function template(kind) {
  const base = "<base model, e.g. Qwen/Qwen2.5-VL-7B-Instruct>";
  switch (kind) {
    case "coldstart":
      return { kind, dataset_id: await newestDataset("source"), ...TEACHERS };
    case "sft":
      return { kind, model: base, dataset_id: await newestDataset("cold") };
    case "grpo":
      return {
        kind,
        model: await newestCheckpoint("sft", "<the cold-start SFT checkpoint>"),
        dataset_id: await newestDataset("rl"),
      };
    case "eval":
      return {
        kind,
        model: await newestCheckpoint("grpo", "<model or checkpoint>"),
        dataset_ids: [await newestDataset("eval")],
      };
    default:
      return {
        kind: "pipeline",
        base_model: base,
        source_dataset_id: await newestDataset("source"),
        eval_dataset_ids: [await newestDataset("eval")],
        coldstart: { ...TEACHERS },
      };
  }
}

/** A key per form shown: a repeated click or a lost answer never makes a second job. */
function freshKey() {
  if (globalThis.crypto?.randomUUID) return `ui-${crypto.randomUUID()}`;
  return `ui-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

export async function newJobPage(view, main, { query }) {
  const from = query.get("from");
  const earlier = from ? await get(`/v1/jobs/${from}`) : null;
  const kind = h(
    "select",
    { name: "kind", "aria-label": "kind" },
    KINDS.map((k) => h("option", { value: k, selected: k === (earlier?.kind ?? "pipeline") }, k)),
  );
  const name = h("input", {
    name: "name",
    "aria-label": "name",
    placeholder: "name (optional)",
    value: earlier ? `${earlier.name} (again)` : "",
  });
  const spec = h("textarea", {
    name: "spec",
    "aria-label": "spec",
    class: "spec-editor",
    rows: 22,
    spellcheck: "false",
  });
  const message = h("pre", { class: "error-box", role: "alert", hidden: true });
  const submit = h("button", { type: "submit", class: "button primary" }, "Submit job");
  let edited = false;
  let key = freshKey();

  const load = (next) => {
    spec.value = JSON.stringify(next, null, 2);
    edited = false;
  };
  spec.addEventListener("input", () => {
    edited = true;
    key = freshKey(); // another spec: another submission
  });
  kind.addEventListener("change", async () => {
    if (edited && !confirm("Replace the spec you edited with the template of this kind?")) {
      return;
    }
    load(await template(kind.value));
  });

  const form = h(
    "form",
    { class: "new-job" },
    h("div", { class: "filters" }, kind, name),
    spec,
    note(
      "Fields left out take the paper's defaults (see the API reference at /docs for every " +
        "field). The spec is checked when it is submitted; nothing is created while it is wrong.",
    ),
    message,
    h("div", { class: "form-actions" }, submit, h("a", { href: "#/jobs" }, "Back to jobs")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    message.hidden = true;
    let body;
    try {
      body = { spec: JSON.parse(spec.value) };
    } catch (error) {
      message.textContent = `The spec is not JSON: ${error.message}`;
      message.hidden = false;
      return;
    }
    if (name.value.trim()) body.name = name.value.trim();
    submit.disabled = true;
    try {
      const job = await call("/v1/jobs", {
        method: "POST",
        body,
        headers: { "Idempotency-Key": key },
      });
      location.hash = `#/jobs/${job.id}`;
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) return;
      message.textContent = error.message;
      message.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });

  load(earlier ? earlier.spec : await template(kind.value));
  view.show(
    main,
    h("div", { class: "page-head" }, h("h1", {}, earlier ? "Run again" : "New job")),
    section(earlier ? `From job ${earlier.name || earlier.id}` : "Spec", form),
  );
  spec.focus();
}
