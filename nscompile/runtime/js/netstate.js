// What the device knows about the network and the server: uplink, RTT, load, back-off,
// as nscompile/runtime/netstate.py keeps it. Times are seconds on a monotonic clock
// (performance.now() / 1000). Bandwidth is smoothed on a log scale because the plan's
// buckets are log-spaced: a 10x change should move the estimate as fast as a 2x change.

/** Seconds on a monotonic clock. */
export function monotonic() {
  return performance.now() / 1000;
}

/** Exponentially weighted moving average of log(x): a smoothed geometric mean. */
export class LogEwma {
  constructor(alpha) {
    if (!(alpha > 0 && alpha <= 1)) throw new RangeError("alpha must be in (0, 1]");
    this.alpha = alpha;
    this._log = null;
    /** The current estimate, or null before the first sample. */
    this.value = null;
    this.updatedAt = 0;
    this.samples = 0;
  }

  /** Fold in one positive sample. */
  add(x, now = monotonic()) {
    const lx = Math.log(Math.max(x, 1e-12));
    this._log = this._log === null ? lx : (1 - this.alpha) * this._log + this.alpha * lx;
    this.value = Math.exp(this._log);
    this.updatedAt = now;
    this.samples += 1;
  }

  /** Forget everything. */
  reset() {
    this._log = null;
    this.value = null;
    this.samples = 0;
  }
}

/**
 * Uplink bandwidth, RTT and server load as the device last measured them.
 *
 * @param {number} alpha smoothing weight of a new sample
 * @param {number} staleS estimates older than this are re-measured with an active probe
 * @param {[number, number]} backoffS (first, max) pause before retrying a server that failed
 */
export class NetState {
  constructor(alpha = 0.4, staleS = 10, backoffS = [0.5, 30]) {
    this.bandwidth = new LogEwma(alpha); // Mbit/s
    this.rtt = new LogEwma(alpha); // ms
    this.staleS = staleS;
    this.load = 1;
    this.loadAt = 0;
    [this.backoffFirst, this.backoffMax] = backoffS;
    this._backoff = 0;
    this.retryAt = 0;
    this.failures = 0;
  }

  /** True when an estimate that matters (not pinned) is missing or stale. */
  needsProbe(now, bandwidth = true, load = true) {
    const b = this.bandwidth;
    if (bandwidth && (b.value === null || now - b.updatedAt > this.staleS)) return true;
    return load && now - this.loadAt > this.staleS;
  }

  /** Record the server's reported slowdown factor (>= 1). */
  setLoad(load, now) {
    if (Number.isFinite(load)) {
      this.load = Math.max(1, load);
      this.loadAt = now;
    }
  }

  /** True while the server should not be tried again. */
  inBackoff(now) {
    return now < this.retryAt;
  }

  /** Note a failed server call; return the back-off chosen, in seconds. */
  failed(now) {
    this.failures += 1;
    this._backoff = this._backoff === 0 ? this.backoffFirst : Math.min(this._backoff * 2, this.backoffMax);
    this.retryAt = now + this._backoff;
    return this._backoff;
  }

  /** Note a successful server call: the back-off starts over. */
  succeeded() {
    this._backoff = 0;
    this.retryAt = 0;
  }
}
