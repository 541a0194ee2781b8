// The runner's error types: one for what the user gave it (a device directory, a plan, a
// server that serves other artifacts), one for messages that break the wire protocol.
// Messages name the file, field or tensor, and say what to do, as NscompileError's do.

/** A problem with the device directory, the plan, the inputs or the server's artifacts. */
export class NscompileError extends Error {
  constructor(message) {
    super(message);
    this.name = "NscompileError";
  }
}

/** A server message that does not follow the KServe v2 protocol, or an HTTP error answer. */
export class ProtocolError extends NscompileError {
  constructor(message, status = 0) {
    super(message);
    this.name = "ProtocolError";
    this.status = status;
  }
}
