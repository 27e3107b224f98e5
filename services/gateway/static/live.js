// A page's lifetime: its polling loops stop when the page is left.

const POLL_MS = 2500;
const ACTIVE = new Set(["queued", "running"]);

export function isActive(job) {
  return ACTIVE.has(job.status);
}

export class View {
  constructor() {
    this.alive = true;
    this.timers = new Set();
  }

  /**
   * Run ``tick`` every ``ms`` after it settles, while it resolves to true and the page is
   * shown. A failed tick (the network, a restart) is retried on the next one.
   */
  poll(tick, ms = POLL_MS) {
    const next = () => {
      const timer = setTimeout(async () => {
        this.timers.delete(timer);
        if (!this.alive) return;
        let again = true;
        if (!document.hidden) {
          try {
            again = await tick();
          } catch (error) {
            console.warn("refresh failed", error);
          }
        }
        if (again && this.alive) next();
      }, ms);
      this.timers.add(timer);
    };
    next();
  }

  /** Put ``children`` in ``element`` unless the page was left meanwhile. */
  show(element, ...children) {
    if (this.alive) element.replaceChildren(...children.filter(Boolean));
    return this.alive;
  }

  dispose() {
    this.alive = false;
    for (const timer of this.timers) clearTimeout(timer);
    this.timers.clear();
  }
}
