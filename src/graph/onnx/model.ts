import { ProtoWriter } from './proto.js';

/** An ONNX attribute value, tagged by its ONNX type. */
export type OnnxAttr =
  | { kind: 'int'; value: number | bigint }
  | { kind: 'float'; value: number }
  | { kind: 'string'; value: string }
  | { kind: 'ints'; value: readonly (number | bigint)[] }
  | { kind: 'floats'; value: readonly number[] }
  | { kind: 'tensor'; value: OnnxTensor };

export const attr = {
  int: (value: number | bigint): OnnxAttr => ({ kind: 'int', value }),
  float: (value: number): OnnxAttr => ({ kind: 'float', value }),
  string: (value: string): OnnxAttr => ({ kind: 'string', value }),
  ints: (value: readonly (number | bigint)[]): OnnxAttr => ({ kind: 'ints', value }),
  floats: (value: readonly number[]): OnnxAttr => ({ kind: 'floats', value }),
};

export interface OnnxNode {
  opType: string;
  domain?: string;
  name?: string;
  inputs: string[];
  outputs: string[];
  attrs?: Record<string, OnnxAttr>;
}

export interface OnnxTensor {
  name: string;
  /** TensorProto.DataType code */
  dataType: number;
  dims: readonly number[];
  /** Little-endian element bytes embedded in the model. */
  raw?: Uint8Array;
  /** Bytes in a file beside the model (location relative to the model's folder). */
  external?: { location: string; offset: number; length: number };
}

export interface OnnxValueInfo {
  name: string;
  dataType: number;
  /** A number, a symbolic name, or undefined for an unknown dim. */
  dims: readonly (number | string | undefined)[];
}

export interface OnnxGraph {
  name: string;
  nodes: OnnxNode[];
  initializers: OnnxTensor[];
  inputs: OnnxValueInfo[];
  outputs: OnnxValueInfo[];
}

export interface OnnxModel {
  irVersion: number;
  opsets: { domain: string; version: number }[];
  producerName: string;
  producerVersion: string;
  graph: OnnxGraph;
}

const ATTR_TYPE = { float: 1, int: 2, string: 3, tensor: 4, floats: 6, ints: 7 } as const;

function writeTensor(w: ProtoWriter, t: OnnxTensor): void {
  for (const d of t.dims) w.varint(1, d);
  w.varint(2, t.dataType);
  w.string(8, t.name);
  if (t.raw) w.bytes(9, t.raw);
  if (t.external) {
    const entries: [string, string][] = [
      ['location', t.external.location],
      ['offset', String(t.external.offset)],
      ['length', String(t.external.length)],
    ];
    for (const [k, v] of entries) w.message(13, (e) => e.string(1, k).string(2, v));
    w.varint(14, 1); // data_location = EXTERNAL
  }
}

function writeAttr(w: ProtoWriter, name: string, a: OnnxAttr): void {
  w.string(1, name);
  switch (a.kind) {
    case 'float':
      w.float32(2, a.value);
      break;
    case 'int':
      w.varint(3, a.value);
      break;
    case 'string':
      w.string(4, a.value);
      break;
    case 'tensor':
      w.message(5, (t) => writeTensor(t, a.value));
      break;
    case 'floats':
      for (const v of a.value) w.float32(7, v);
      break;
    case 'ints':
      for (const v of a.value) w.varint(8, v);
      break;
  }
  w.varint(20, ATTR_TYPE[a.kind]);
}

function writeValueInfo(w: ProtoWriter, v: OnnxValueInfo): void {
  w.string(1, v.name);
  w.message(2, (type) =>
    type.message(1, (tensorType) => {
      tensorType.varint(1, v.dataType);
      tensorType.message(2, (shape) => {
        for (const d of v.dims) {
          shape.message(1, (dim) => {
            if (typeof d === 'number') dim.varint(1, d);
            else if (typeof d === 'string') dim.string(2, d);
          });
        }
      });
    }),
  );
}

function writeNode(w: ProtoWriter, n: OnnxNode): void {
  for (const i of n.inputs) w.string(1, i);
  for (const o of n.outputs) w.string(2, o);
  if (n.name) w.string(3, n.name);
  w.string(4, n.opType);
  for (const [k, a] of Object.entries(n.attrs ?? {})) w.message(5, (aw) => writeAttr(aw, k, a));
  if (n.domain) w.string(7, n.domain);
}

/** Encode a model as ONNX ModelProto bytes. */
export function encodeModel(model: OnnxModel): Uint8Array {
  const w = new ProtoWriter();
  w.varint(1, model.irVersion);
  w.string(2, model.producerName);
  w.string(3, model.producerVersion);
  w.message(7, (g) => {
    for (const n of model.graph.nodes) g.message(1, (nw) => writeNode(nw, n));
    g.string(2, model.graph.name);
    for (const t of model.graph.initializers) g.message(5, (tw) => writeTensor(tw, t));
    for (const i of model.graph.inputs) g.message(11, (vw) => writeValueInfo(vw, i));
    for (const o of model.graph.outputs) g.message(12, (vw) => writeValueInfo(vw, o));
  });
  for (const o of model.opsets) w.message(8, (ow) => ow.string(1, o.domain).varint(2, o.version));
  return w.finish();
}
