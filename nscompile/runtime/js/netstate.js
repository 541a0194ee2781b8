// What the device knows about the network, the server and itself: uplink, RTT, load,
// back-off, and its own slowdown against its profile, as nscompile/runtime/netstate.py
// keeps them. Times are seconds on a monotonic clock
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
    if (now < this.retryAt) {
      // A call that started before the back-off began (a background probe beside a
      // request): the same outage, so it must not double the back-off again.
      return this.retryAt - now;
    }
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

/**
 * The device's slowdown factor Kd: measured over predicted time of its own runs
 * (Python's DeviceLoad).
 *
 * Every prefix (the all-device model included) that the device runs is one sample: its
 * measured milliseconds over the plan's prediction for that cut. The estimate is the
 * median of the last `window` samples, weighted by their predicted milliseconds, so one
 * run preempted by another tab moves it by one rank at most, while a lasting change
 * (another app, heat, a throttled background tab) takes over after about
 * window // 2 + 1 runs; a long run counts for more than a short one, which shows a
 * slowdown less faithfully. Before the first sample it is 1: the device as profiled.
 *
 * @param {number} window how many recent samples the median is taken over
 */
export class DeviceLoad {
  constructor(window = 5) {
    if (!(window >= 1)) throw new RangeError("window must be >= 1");
    this.window = window;
    this._samples = []; // [ratio, predicted ms], oldest first
    /** The current estimate (1 before the first sample). */
    this.value = 1;
    this.samples = 0;
    this.updatedAt = 0;
  }

  /** Fold in one run of device work that the plan predicted at `predictedMs`. */
  add(measuredMs, predictedMs, now = monotonic()) {
    if (!(measuredMs > 0 && predictedMs > 0 && Number.isFinite(measuredMs) && Number.isFinite(predictedMs))) return;
    this._samples.push([measuredMs / predictedMs, predictedMs]);
    if (this._samples.length > this.window) this._samples.shift();
    this.value = weightedMedian(this._samples);
    this.samples += 1;
    this.updatedAt = now;
  }

  /** Forget every sample: back to the device as profiled. */
  reset() {
    this._samples = [];
    this.value = 1;
    this.samples = 0;
  }
}

/**
 * The value at half the total weight of [value, weight] pairs (the mean of the two middle
 * values where the half falls exactly between them, as the plain median does); the same
 * order of additions as Python's _weighted_median, so both give the same number.
 */
export function weightedMedian(samples) {
  const ordered = [...samples].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let total = 0;
  for (const [, w] of ordered) total += w;
  const half = total / 2;
  let seen = 0;
  for (let i = 0; i < ordered.length; i++) {
    const [value, weight] = ordered[i];
    seen += weight;
    if (seen > half * (1 + 1e-12)) return value;
    if (Math.abs(seen - half) <= half * 1e-12) return i + 1 < ordered.length ? 0.5 * (value + ordered[i + 1][0]) : value;
  }
  return ordered[ordered.length - 1][0];
}
