"""A small reader of vmc's .vmc model file (docs/file-format.md, versions 1 to 4), for
the Python peer benchmarks: the metadata, the graph, and every tensor of the directory as
a torch tensor (f32, s8, u8; s4 unpacked to int8; entropy-coded s8/s4 codes of versions 3
and 4 and entropy-coded f32 values of version 4 decoded; a version 4 s32 tensor, a bias
stored as integers on its layer's grid, as its f32 values, its codes in .codes).  A scale
or zero-point tensor (role 1 / 2) is attached to the tensor it qualifies (.scale,
.zero_point, .axis) rather than listed by name: versions 2 to 4 give an s8/s4 weight's
scales the weight's own name.

    import vmcfile
    m = vmcfile.read("/work/models/resnet8.vmc")
    m.meta["architecture"], m.tensors["conv1.weight"].shape, m.nodes[0]["op"]
    model.load_state_dict(m.float_params(), strict=False)

    python3 bench/vmcfile.py FILE ...            a summary of each file
    python3 bench/vmcfile.py --meta KEY FILE     one metadata value (empty if absent)

It checks the envelope (magic, version, size, CRC-32) and the bounds of every field it
reads (for coded codes: the code table, a complete prefix code, the exact end of the bits),
and raises VmcFileError naming the file and the field on a malformed file.
"""
import struct
import zlib

import torch

MAGIC = b"VMCMODEL"
VERSIONS = (1, 2, 3, 4)
HEADER_BYTES = 96
DTYPES = {0: ("f32", 4), 1: ("s8", 1), 2: ("u8", 1), 3: ("s32", 4), 4: ("s4", None)}
ROLES = {0: "data", 1: "scale", 2: "zero_point"}
FLAG_TRAINABLE, FLAG_EXTRA, FLAG_CODED = 1, 2, 4
CODED_OWN_TABLE, CODED_DEFINE_SHARED, CODED_SHARED_TABLE = 0, 1, 2
MAX_CODE_LEN = 15
ALPHABETS = {"s8": (-127, 127), "s4": (-7, 7), "f32": (-128, 127), "s32": (0, 32)}
ATTR_INT, ATTR_FLOAT, ATTR_BOTH = 0, 1, 2


class VmcFileError(ValueError):
    pass


class Tensor:
    def __init__(self, name, dtype, role, flags, link, axis, dims, data):
        self.name, self.dtype, self.role, self.flags = name, dtype, role, flags
        self.link, self.axis, self.dims, self.data = link, axis, dims, data
        self.scale = self.zero_point = None  # companions (torch tensors), if any
        self.qaxis = 0
        self.codes = None  # a version 4 s32 tensor: its integer codes (data: the values)

    def dequantized(self):
        """float32 values: the data itself, or (codes - zero point) x scale along
        the companions' axis."""
        if self.scale is None:
            return self.data.float()
        shape = [1] * len(self.dims)
        if self.scale.numel() > 1:
            shape[self.qaxis] = -1
        v = self.data.float()
        if self.zero_point is not None:
            v = v - self.zero_point.float().view(shape)
        return v * self.scale.float().view(shape)

    @property
    def shape(self):
        return tuple(self.dims)


class Model:
    def __init__(self, path, meta, tensors, order, input_chw, nodes, output):
        self.path, self.meta, self.tensors, self.order = path, meta, tensors, order
        self.input_chw, self.nodes, self.output = input_chw, nodes, output

    def float_params(self):
        """{name: float32 tensor} of the graph's parameters (no extras); quantized
        storage is dequantized."""
        return {n: t.dequantized() for n, t in self.tensors.items()
                if not t.flags & FLAG_EXTRA}


class _Cursor:
    def __init__(self, buf, pos, end, path, what):
        self.buf, self.pos, self.end, self.path, self.what = buf, pos, end, path, what

    def take(self, n, field):
        if n < 0 or self.pos + n > self.end:
            raise VmcFileError("%s: %s: %s runs past the end of the section"
                               % (self.path, self.what, field))
        b = self.buf[self.pos:self.pos + n]
        self.pos += n
        return b

    def u8(self, field):
        return self.take(1, field)[0]

    def u32(self, field):
        return struct.unpack("<I", self.take(4, field))[0]

    def uv(self, field):
        """An unsigned LEB128 varint of at most 32 bits, in its shortest form."""
        v = 0
        for k in range(5):
            b = self.take(1, field)[0]
            if k == 4 and b > 15:
                break
            v |= (b & 127) << (7 * k)
            if not b & 128:
                if k and not b:
                    break
                return v
        raise VmcFileError("%s: %s: %s is a malformed varint" % (self.path, self.what, field))

    def i32(self, field):
        return struct.unpack("<i", self.take(4, field))[0]

    def f32(self, field):
        return struct.unpack("<f", self.take(4, field))[0]

    def u64(self, field):
        return struct.unpack("<Q", self.take(8, field))[0]

    def str(self, field, lo, hi, compact=False):
        n = (self.uv if compact else self.u32)(field + " length")
        if not lo <= n <= hi:
            raise VmcFileError("%s: %s: %s length %d outside %d..%d"
                               % (self.path, self.what, field, n, lo, hi))
        b = self.take(n, field)
        if b"\0" in b:
            raise VmcFileError("%s: %s: %s holds a NUL byte" % (self.path, self.what, field))
        return b.decode("utf-8", "replace")


def _code_table(b, alphabet, fail):
    """(lookup, bytes): a coded tensor's code table from the start of b (i8 lo, u8 n with 0
    for 256, n 4-bit lengths low nibble first) as a 2^15-entry lookup of (symbol, length)
    by the next 15 bits of the stream, None where no code starts so (a one-symbol table)."""
    if len(b) < 2:
        fail("its code table runs past the end")
    lo = b[0] - 256 if b[0] >= 128 else b[0]
    n = b[1] or 256
    if lo < alphabet[0] or lo + n - 1 > alphabet[1]:
        fail("its code table covers %d symbols from %d, outside %d..%d" % (n, lo, *alphabet))
    size = 2 + (n + 1) // 2
    if size > len(b):
        fail("its code table runs past the end")
    lens = [(b[2 + k // 2] >> (4 * (k & 1))) & 15 for k in range(n)]
    if n & 1 and b[size - 1] >> 4:
        fail("its code table's unused last nibble is not 0")
    if not lens[0] or not lens[-1]:
        fail("its code table starts or ends with a symbol without a code")
    used = [k for k in range(n) if lens[k]]
    kraft = sum(1 << (MAX_CODE_LEN - lens[k]) for k in used)
    if (lens[0] != 1) if len(used) == 1 else (kraft != 1 << MAX_CODE_LEN):
        fail("its code lengths are not a complete prefix code")
    lookup = [None] * (1 << MAX_CODE_LEN)
    code = 0
    for length in range(1, MAX_CODE_LEN + 1):  # canonical: by length, then by value
        for k in used:
            if lens[k] == length:
                span = 1 << (MAX_CODE_LEN - length)
                lookup[code * span:(code + 1) * span] = [(lo + k, length)] * span
                code += 1
        code <<= 1
    return lookup, size


def _decode_codes(bits, lookup, count, fail, prefix=False):
    """count codes from the bytes `bits` (most significant bit first); with prefix, from
    the start of them, returning (codes, bytes used)."""
    total = 8 * len(bits)
    padded = bytes(bits) + b"\0\0\0"
    out = [0] * count
    pos = 0
    for i in range(count):
        if pos > total:
            fail("its %d codes run past the end of its bytes" % count)
        at = pos >> 3
        window = (padded[at] << 16 | padded[at + 1] << 8 | padded[at + 2]) >> (9 - (pos & 7))
        entry = lookup[window & 0x7FFF]
        if entry is None:
            fail("element %d has no code" % i)
        out[i] = entry[0]
        pos += entry[1]
    if pos > total:
        fail("its %d codes run past the end of its bytes" % count)
    used = (pos + 7) // 8
    if pos % 8 and bits[used - 1] & ((1 << (8 - pos % 8)) - 1):
        fail("the padding bits after its last code are not zero")
    if prefix:
        return out, used
    if used < len(bits):
        fail("%d bytes follow its last code" % (len(bits) - used))
    return out


def _count(path, name, dims):
    """The element count of a tensor's dimensions, each 1 .. 2^31 - 1."""
    if any(d < 1 or d >= 1 << 31 for d in dims):
        raise VmcFileError("%s: tensor %s: bad dimension %s" % (path, name, dims))
    count = 1
    for d in dims:
        count *= d
    return count


def _tensor_data(buf, dtype, dims, off, nbytes):
    count = _count("", "", dims)
    raw = bytearray(buf[off:off + nbytes])
    if dtype == "f32":
        return torch.frombuffer(raw, dtype=torch.float32).clone().view(*dims)
    if dtype == "s8":
        return torch.frombuffer(raw, dtype=torch.int8).clone().view(*dims)
    if dtype == "u8":
        return torch.frombuffer(raw, dtype=torch.uint8).clone().view(*dims)
    if dtype == "s32":
        return torch.frombuffer(raw, dtype=torch.int32).clone().view(*dims)
    # s4: two per byte, low nibble first, two's complement
    b = torch.frombuffer(raw, dtype=torch.uint8).to(torch.int16)
    nib = torch.stack((b & 0xF, b >> 4), 1).flatten()[:count]
    return torch.where(nib >= 8, nib - 16, nib).to(torch.int8).view(*dims)


def _coded_stream(b, slot, count, shared, fail, prefix=False):
    """A coded stream: a table mode byte, the code table (unless the mode says the shared
    one of its dtype), the Huffman-coded symbols; (symbols, bytes used) with prefix."""
    if not b:
        fail("no table mode byte")
    mode = b[0]
    if mode in (CODED_OWN_TABLE, CODED_DEFINE_SHARED):
        if mode == CODED_DEFINE_SHARED and slot in shared:
            fail("a second tensor defines the shared %s code table" % slot)
        lookup, size = _code_table(b[1:], ALPHABETS[slot], fail)
        if mode == CODED_DEFINE_SHARED:
            shared[slot] = lookup
        start = 1 + size
    elif mode == CODED_SHARED_TABLE:
        if slot not in shared:
            fail("uses the shared %s code table, but no earlier tensor defines one" % slot)
        lookup, start = shared[slot], 1
    else:
        fail("unknown code table mode %d" % mode)
    got = _decode_codes(b[start:], lookup, count, fail, prefix)
    return (got[0], start + got[1]) if prefix else got


def _coded_data(b, dtype, dims, count, shared, what):
    """The int8 codes of an entropy-coded s8/s4 tensor."""
    def fail(msg):
        raise VmcFileError("%s: %s" % (what, msg))
    codes = _coded_stream(b, dtype, count, shared, fail)
    return torch.tensor(codes, dtype=torch.int8).view(*dims)


def _coded_f32(b, dims, count, shared, what):
    """The values of an entropy-coded f32 tensor (version 4): the coded stream of their top
    bytes, then the three low bytes of each, little-endian."""
    def fail(msg):
        raise VmcFileError("%s: %s" % (what, msg))
    top, used = _coded_stream(b, "f32", count, shared, fail, prefix=True)
    if len(b) - used != 3 * count:
        fail("%d bytes follow the top bytes of its %d values, expected %d"
             % (len(b) - used, count, 3 * count))
    out = bytearray(4 * count)
    out[0::4], out[1::4], out[2::4] = b[used::3], b[used + 1::3], b[used + 2::3]
    out[3::4] = bytes(t & 255 for t in top)
    return torch.frombuffer(out, dtype=torch.float32).clone().view(*dims)


def _coded_ints(b, count, shared, what):
    """The integer codes of an s32 tensor (version 4): the factor t (f32), the coded
    stream of the bit lengths of their zigzag forms, then the bits below each leading 1;
    (codes, t)."""
    def fail(msg):
        raise VmcFileError("%s: %s" % (what, msg))
    if len(b) < 5:
        fail("fewer bytes than its factor and table mode")
    t = struct.unpack_from("<f", b, 0)[0]
    lens, used = _coded_stream(b[4:], "s32", count, shared, fail, prefix=True)
    raw = b[4 + used:]
    nbits = sum(L - 1 for L in lens if L > 1)
    if len(raw) != (nbits + 7) // 8:
        fail("%d bytes follow the bit lengths of its codes, which need %d bits"
             % (len(raw), nbits))
    acc = int.from_bytes(raw, "big") if raw else 0
    left = 8 * len(raw)
    codes = []
    for L in lens:
        u = 1 if L else 0
        if L > 1:
            left -= L - 1
            u = 1 << (L - 1) | (acc >> left) & ((1 << (L - 1)) - 1)
        codes.append(u >> 1 if not u & 1 else -(u >> 1) - 1)
    if acc & ((1 << left) - 1):
        fail("the padding bits after its last code are not zero")
    return codes, t


def _read_compact(buf, path, n_meta, n_tensors, n_nodes, meta_off, strings_off, tens_off,
                  graph_off, data_off):
    """The sections of a version 4 file: (meta, tensors, order, input_chw, nodes, output)."""
    c = _Cursor(buf, meta_off, strings_off, path, "metadata")
    meta = {}
    for _ in range(n_meta):
        k = c.str("key", 1, 255, True)
        meta[k] = c.str("value of " + k, 0, (1 << 24) - 1, True)
    if c.pos != strings_off:
        raise VmcFileError("%s: metadata section not consumed exactly" % path)

    c = _Cursor(buf, strings_off, tens_off, path, "string table")
    strings, prev = [], b""
    for i in range(c.uv("the number of strings")):
        p, k = c.uv("string %d prefix" % i), c.uv("string %d length" % i)
        rest = c.take(k, "string %d" % i)
        s = prev[:p] + rest
        if p > len(prev) or not 1 <= len(s) <= 63 or not k or b"\0" in rest \
                or (strings and (s <= prev or (p < len(prev) and s[p] == prev[p]))):
            raise VmcFileError("%s: string %d is malformed or out of order" % (path, i))
        strings.append(s.decode("utf-8", "replace"))
        prev = s
    if c.pos != tens_off:
        raise VmcFileError("%s: string table not consumed exactly" % path)
    used = [False] * len(strings)

    def name(cur, field, hi=63):
        i = cur.uv(field)
        if i >= len(strings) or len(strings[i].encode()) > hi:
            raise VmcFileError("%s: %s: %s is string %d of %d" % (path, cur.what, field, i,
                                                                    len(strings)))
        used[i] = True
        return strings[i]

    c = _Cursor(buf, tens_off, graph_off, path, "tensor directory")
    tensors, order, by_index, at = {}, [], [], data_off
    shared = {}  # dtype -> the lookup of its shared code table
    for i in range(n_tensors):
        tname = name(c, "tensor %d name" % i)
        code, role, tflags = c.u8(tname + " dtype"), c.u8(tname + " role"), c.u8(tname + " flags")
        back, axis, ndim = c.uv(tname + " link"), c.uv(tname + " axis"), c.u8(tname + " ndim")
        if code not in DTYPES or role not in ROLES or ndim > 4 or back > i or tflags & ~7:
            raise VmcFileError("%s: tensor %s: bad dtype %d, role %d, flags %d, link %d or "
                               "ndim %d" % (path, tname, code, role, tflags, back, ndim))
        link = i - back if back else None
        dims = [c.uv(tname + " dims") for _ in range(ndim)]
        count = _count(path, tname, dims)
        nbytes = c.uv(tname + " nbytes")
        off, at = at, at + nbytes
        if at > len(buf) - 4:
            raise VmcFileError("%s: tensor %s: data past the data region" % (path, tname))
        dtype, size = DTYPES[code]
        want = (count + 1) // 2 if size is None else count * size
        coded = tflags & FLAG_CODED
        what = "%s: tensor %s (entropy-coded %s)" % (path, tname, dtype)
        b = buf[off:off + nbytes]
        if dtype == "s32":
            if role or not coded or ndim != 1 or link is None or by_index[link].dtype not in \
                    ("s4", "s8") or by_index[link].scale is None:
                raise VmcFileError("%s: tensor %s: an s32 tensor must be a coded 1-D parameter "
                                   "linked to the codes of an s8/s4 one" % (path, tname))
            ints, factor = _coded_ints(b, count, shared, what)
            sw = by_index[link].scale
            if sw.numel() not in (1, count):
                raise VmcFileError("%s: tensor %s: %d elements on the %d scales of %s"
                                   % (path, tname, count, sw.numel(), by_index[link].name))
            step = sw.float() * torch.tensor(factor, dtype=torch.float32)
            codes = torch.tensor(ints, dtype=torch.int32)
            data = (codes.float() * step).view(*dims)
            t = Tensor(tname, "f32", "data", tflags, link, axis, dims, data)
            t.codes = codes
        else:
            if coded and not (dtype == "f32" or (dtype in ("s8", "s4") and not role)):
                raise VmcFileError("%s: tensor %s: flag CODED on a %s tensor of role %d"
                                   % (path, tname, dtype, role))
            sized = (0 < nbytes < want and count <= 8 * nbytes) if coded else nbytes == want
            if not sized:
                raise VmcFileError("%s: tensor %s: %d bytes for %d %s values" % (path, tname,
                                                                                 nbytes, count,
                                                                                 dtype))
            if coded and dtype == "f32":
                data = _coded_f32(b, dims, count, shared, what)
            elif coded:
                data = _coded_data(b, dtype, dims, count, shared, what)
            else:
                data = _tensor_data(buf, dtype, dims, off, nbytes)
            t = Tensor(tname, dtype, ROLES[role], tflags, link, axis, dims, data)
        _add_tensor(path, t, i, by_index, tensors, order)
    if c.pos != graph_off or at != len(buf) - 4:
        raise VmcFileError("%s: tensor directory or data region not consumed exactly" % path)

    c = _Cursor(buf, graph_off, data_off, path, "graph")
    input_chw = (c.uv("input C"), c.uv("input H"), c.uv("input W"))
    nodes, values = [], ["input"]
    for i in range(n_nodes):
        op, nname = name(c, "node %d op" % i), name(c, "node %d name" % i)
        n_in = c.uv(nname + " n_in")
        if n_in > 8:
            raise VmcFileError("%s: node %s: %d inputs" % (path, nname, n_in))
        inputs = []
        for _ in range(n_in):
            v = c.uv(nname + " input")
            if v > i:
                raise VmcFileError("%s: node %s: input value %d" % (path, nname, v))
            inputs.append(values[v])
        n_attr = c.uv(nname + " n_attr")
        if n_attr > 12:
            raise VmcFileError("%s: node %s: %d attributes" % (path, nname, n_attr))
        attrs = {}
        for _ in range(n_attr):
            key = name(c, nname + " attribute key", 15)
            form = c.u8(nname + " " + key + " form")
            if form > ATTR_BOTH:
                raise VmcFileError("%s: node %s: attribute %s of form %d" % (path, nname, key,
                                                                              form))
            iv = fv = 0
            if form != ATTR_FLOAT:
                u = c.uv(nname + " " + key)
                iv = u >> 1 if not u & 1 else -(u >> 1) - 1
            if form != ATTR_INT:
                fv = c.f32(nname + " " + key)
            if form == ATTR_INT:
                fv = float(iv)
            elif form == ATTR_FLOAT:
                iv = int(fv) if -2.0 ** 31 <= fv < 2.0 ** 31 else 0
            attrs[key] = (iv, fv)
        n_param = c.uv(nname + " n_param")
        if n_param > 4:
            raise VmcFileError("%s: node %s: %d parameters" % (path, nname, n_param))
        params = []
        for _ in range(n_param):
            k = c.uv(nname + " parameter")
            if k >= len(by_index) or by_index[k].role != "data" or by_index[k].flags & FLAG_EXTRA:
                raise VmcFileError("%s: node %s: parameter %d is no parameter's data"
                                   % (path, nname, k))
            params.append(by_index[k].name)
        nodes.append({"op": op, "name": nname, "inputs": inputs, "attrs": attrs,
                      "params": params})
        values.append(nname)
    v = c.uv("output")
    if v > n_nodes or c.pos != data_off or not all(used):
        raise VmcFileError("%s: bad output value, graph not consumed exactly, or an unused "
                           "string" % path)
    return meta, tensors, order, input_chw, nodes, values[v]


def _attach(path, t, i, by_index):
    """Attaches companion t (directory entry i) to the tensor it qualifies."""
    link, axis = t.link, t.axis
    if link is None or link >= i or by_index[link].role != "data" \
            or axis >= len(by_index[link].dims):
        raise VmcFileError("%s: tensor %s: link %s / axis %d name no earlier data tensor"
                           % (path, t.name, link, axis))
    target = by_index[link]
    if t.data.numel() not in (1, target.dims[axis]):
        raise VmcFileError("%s: tensor %s: %d values for axis %d of %s"
                           % (path, t.name, t.data.numel(), axis, target.name))
    setattr(target, "scale" if t.role == "scale" else "zero_point", t.data.flatten())
    target.qaxis = axis


def _add_tensor(path, t, i, by_index, tensors, order):
    """Directory entry i: a companion attached to the tensor it qualifies, or
    a data tensor under its (unique) name."""
    by_index.append(t)
    if t.role != "data":
        _attach(path, t, i, by_index)
        return
    if t.name in tensors:
        raise VmcFileError("%s: tensor %s appears twice" % (path, t.name))
    tensors[t.name] = t
    order.append(t.name)


def read(path):
    """The model in `path` (a Model); VmcFileError on any malformed input."""
    with open(path, "rb") as f:
        buf = f.read()
    if len(buf) < 8 or buf[:8] != MAGIC:
        raise VmcFileError("%s: not a .vmc file" % path)
    if len(buf) < HEADER_BYTES:
        raise VmcFileError("%s: truncated header" % path)
    (version, header_bytes, file_bytes, n_meta, n_tensors, n_nodes, flags,
     meta_off, tens_off, graph_off, data_off) = struct.unpack_from("<IIQIIIIQQQQ", buf, 8)
    if version not in VERSIONS:
        raise VmcFileError("%s: format version %d (this reader knows %s)"
                           % (path, version, VERSIONS))
    if header_bytes != HEADER_BYTES or file_bytes != len(buf):
        raise VmcFileError("%s: truncated or trailing bytes (header says %d, file has %d)"
                           % (path, file_bytes, len(buf)))
    crc = struct.unpack_from("<I", buf, len(buf) - 4)[0]
    if zlib.crc32(memoryview(buf)[:len(buf) - 4]) & 0xFFFFFFFF != crc:
        raise VmcFileError("%s: checksum mismatch: the file is corrupted" % path)
    strings_off = struct.unpack_from("<Q", buf, 72)[0] if version >= 4 else tens_off
    if flags or any(buf[80 if version >= 4 else 72:96]):
        raise VmcFileError("%s: header flags or reserved bytes not zero" % path)
    if not (meta_off == HEADER_BYTES <= strings_off <= tens_off <= graph_off <= data_off
            <= len(buf) - 4) or (version < 4 and data_off % 64):
        raise VmcFileError("%s: section offsets out of order or misaligned" % path)
    if version >= 4:
        return Model(path, *_read_compact(buf, path, n_meta, n_tensors, n_nodes, meta_off,
                                          strings_off, tens_off, graph_off, data_off))

    c = _Cursor(buf, meta_off, tens_off, path, "metadata")
    meta = {}
    for _ in range(n_meta):
        k = c.str("key", 1, 255)
        meta[k] = c.str("value of " + k, 0, (1 << 24) - 1)
    if c.pos != tens_off:
        raise VmcFileError("%s: metadata section not consumed exactly" % path)

    c = _Cursor(buf, tens_off, graph_off, path, "tensor directory")
    tensors, order, by_index = {}, [], []
    shared = {}  # dtype -> the lookup of the shared code table (version 3)
    for i in range(n_tensors):
        name = c.str("tensor %d name" % i, 1, 63)
        code, role, tflags, link, axis, ndim = (c.u32(name + " " + f) for f in
                                                ("dtype", "role", "flags", "link", "axis",
                                                 "ndim"))
        if code not in DTYPES or role not in ROLES or ndim > 4:
            raise VmcFileError("%s: tensor %s: bad dtype %d, role %d or ndim %d"
                               % (path, name, code, role, ndim))
        dims = [c.u32(name + " dims") for _ in range(ndim)]
        count = _count(path, name, dims)
        off, nbytes = c.u64(name + " offset"), c.u64(name + " nbytes")
        dtype, size = DTYPES[code]
        want = (count + 1) // 2 if size is None else count * size
        coded = tflags & FLAG_CODED
        if coded and (version < 3 or role or dtype not in ("s8", "s4")):
            raise VmcFileError("%s: tensor %s: only the s8/s4 codes of a version 3 file are "
                               "entropy-coded" % (path, name))
        sized = (0 < nbytes < want and count <= 8 * nbytes) if coded else nbytes == want
        if not sized or off % 64 or off < data_off or off + nbytes > len(buf) - 4:
            raise VmcFileError("%s: tensor %s: data at %d (%d bytes) misplaced or sized wrong"
                               % (path, name, off, nbytes))
        if coded:
            data = _coded_data(buf[off:off + nbytes], dtype, dims, count, shared,
                               "%s: tensor %s (entropy-coded %s)" % (path, name, dtype))
        else:
            data = _tensor_data(buf, dtype, dims, off, nbytes)
        t = Tensor(name, dtype, ROLES[role], tflags, link, axis, dims, data)
        _add_tensor(path, t, i, by_index, tensors, order)

    c = _Cursor(buf, graph_off, data_off, path, "graph")
    input_chw = (c.u32("input C"), c.u32("input H"), c.u32("input W"))
    nodes = []
    for i in range(n_nodes):
        op = c.str("node %d op" % i, 1, 63)
        name = c.str("node %d name" % i, 1, 63)
        n_in = c.u32(name + " n_in")
        if n_in > 8:
            raise VmcFileError("%s: node %s: %d inputs" % (path, name, n_in))
        inputs = [c.str(name + " input", 1, 63) for _ in range(n_in)]
        n_attr = c.u32(name + " n_attr")
        if n_attr > 12:
            raise VmcFileError("%s: node %s: %d attributes" % (path, name, n_attr))
        attrs = {}
        for _ in range(n_attr):
            key = c.str(name + " attribute key", 1, 15)
            attrs[key] = (c.i32(name + " " + key), c.f32(name + " " + key))
        n_param = c.u32(name + " n_param")
        if n_param > 4:
            raise VmcFileError("%s: node %s: %d parameters" % (path, name, n_param))
        params = [c.str(name + " parameter", 1, 63) for _ in range(n_param)]
        nodes.append({"op": op, "name": name, "inputs": inputs, "attrs": attrs,
                      "params": params})
    output = c.str("output name", 1, 63)
    if data_off - c.pos >= 64 or any(buf[c.pos:data_off]):
        raise VmcFileError("%s: bytes after the graph section are not alignment padding"
                           % path)
    return Model(path, meta, tensors, order, input_chw, nodes, output)


if __name__ == "__main__":
    import sys
    args = sys.argv[1:]
    if len(args) == 3 and args[0] == "--meta":  # vmcfile.py --meta KEY FILE: one value
        print(read(args[2]).meta.get(args[1], ""))
        sys.exit(0)
    for p in args:
        m = read(p)
        print("%s: %d metadata, %d tensors, %d nodes, input %s, output %s"
              % (p, len(m.meta), len(m.tensors), len(m.nodes), m.input_chw, m.output))
        for k, v in m.meta.items():
            print("  %s = %s" % (k, v if len(v) < 80 else v[:77] + "..."))
