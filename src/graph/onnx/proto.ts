/**
 * A minimal protocol-buffers encoder: enough to write ONNX ModelProto. Fields are written in the
 * order given; repeated scalars are written unpacked, which every proto2 parser accepts.
 */
export class ProtoWriter {
  private chunks: Uint8Array[] = [];
  private scratch = new Uint8Array(64);
  private used = 0;
  private total = 0;

  get length(): number {
    return this.total + this.used;
  }

  private flushScratch(): void {
    if (this.used > 0) {
      this.chunks.push(this.scratch.slice(0, this.used));
      this.total += this.used;
      this.used = 0;
    }
  }

  private byte(b: number): void {
    if (this.used === this.scratch.length) this.flushScratch();
    this.scratch[this.used++] = b;
  }

  private rawVarint(value: number | bigint): void {
    if (typeof value === 'number' && value >= 0 && Number.isSafeInteger(value)) {
      let v = value;
      while (v >= 0x80) {
        this.byte((v % 0x80) | 0x80);
        v = Math.floor(v / 0x80);
      }
      this.byte(v);
      return;
    }
    // Negative int64 values are encoded as their 64-bit two's complement (10 bytes).
    let v = BigInt.asUintN(64, BigInt(value));
    while (v >= 0x80n) {
      this.byte(Number(v & 0x7fn) | 0x80);
      v >>= 7n;
    }
    this.byte(Number(v));
  }

  private tag(field: number, wireType: number): void {
    this.rawVarint(field * 8 + wireType);
  }

  varint(field: number, value: number | bigint): this {
    this.tag(field, 0);
    this.rawVarint(value);
    return this;
  }

  float32(field: number, value: number): this {
    this.tag(field, 5);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, value, true);
    for (const x of b) this.byte(x);
    return this;
  }

  bytes(field: number, data: Uint8Array): this {
    this.tag(field, 2);
    this.rawVarint(data.length);
    this.append(data);
    return this;
  }

  string(field: number, value: string): this {
    return this.bytes(field, new TextEncoder().encode(value));
  }

  message(field: number, write: (w: ProtoWriter) => void): this {
    const sub = new ProtoWriter();
    write(sub);
    this.tag(field, 2);
    this.rawVarint(sub.length);
    sub.flushScratch();
    for (const c of sub.chunks) this.append(c);
    return this;
  }

  private append(data: Uint8Array): void {
    if (data.length <= 32) {
      for (const x of data) this.byte(x);
      return;
    }
    this.flushScratch();
    this.chunks.push(data);
    this.total += data.length;
  }

  finish(): Uint8Array {
    this.flushScratch();
    const out = new Uint8Array(this.total);
    let at = 0;
    for (const c of this.chunks) {
      out.set(c, at);
      at += c.length;
    }
    return out;
  }
}
