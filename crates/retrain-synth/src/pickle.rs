//! A pickle writer that emits exactly what Python 2.7's `cPickle.dump(obj, f, 2)` emitted for the
//! objects in a CIFAR archive: dicts with `str` keys, lists of `str` or `int`, and numpy `uint8`
//! matrices (numpy 1.x, `numpy.core.multiarray._reconstruct`).
//!
//! The cPickle rules this follows (Modules/cPickle.c, Python 2.7):
//! - a dict or list is memoised (`BINPUT`) as soon as it is opened, then filled in batches of 1000
//!   items, `MARK … SETITEMS`/`APPENDS` (a batch of one uses `SETITEM`/`APPEND`);
//! - a `str` of two or more bytes held in a list or dict is memoised; shorter ones never are;
//!   a `str` under 256 bytes is `SHORT_BINSTRING`, a longer one `BINSTRING`;
//! - an `int` is `BININT1` below 256, `BININT2` below 65536, `BININT` otherwise (never memoised);
//! - dict items come out in the order given: the caller passes the real files' order (CPython 2's
//!   hash-table order, which Python 3 readers show as the key order);
//! - an ndarray is `GLOBAL _reconstruct`, `(ndarray, (0,), 'b')`, `REDUCE`, then `BUILD` with
//!   `(1, shape, dtype, False, raw bytes)`; the dtype is `GLOBAL numpy dtype`, `('u1', 0, 1)`,
//!   `REDUCE`, `BUILD (3, '|', None, None, None, -1, -1, 0)`. Objects numpy builds afresh for
//!   `__reduce__` (the argument tuples, the `'u1'` string, the raw bytes) have one reference, so
//!   cPickle does not memoise them; the array and the (singleton) dtype are memoised.

const PROTO: u8 = 0x80;
const EMPTY_DICT: u8 = b'}';
const EMPTY_LIST: u8 = b']';
const MARK: u8 = b'(';
const SETITEM: u8 = b's';
const SETITEMS: u8 = b'u';
const APPEND: u8 = b'a';
const APPENDS: u8 = b'e';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const SHORT_BINSTRING: u8 = b'U';
const BINSTRING: u8 = b'T';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const BININT: u8 = b'J';
const GLOBAL: u8 = b'c';
const TUPLE: u8 = b't';
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const REDUCE: u8 = b'R';
const BUILD: u8 = b'b';
const NONE: u8 = b'N';
const NEWFALSE: u8 = 0x89;
const STOP: u8 = b'.';

/// cPickle's batch size for `APPENDS` and `SETITEMS`.
const BATCH: usize = 1000;

/// The Python objects a CIFAR pickle holds.
#[derive(Debug, Clone)]
pub enum Value<'a> {
    /// A Python 2 `str` (bytes).
    Str(&'a [u8]),
    Int(i64),
    List(Vec<Value<'a>>),
    /// Items in the order the pickle lists them.
    Dict(Vec<(&'a str, Value<'a>)>),
    /// A C-contiguous `uint8` matrix of `rows` × `cols` holding `data`.
    U8Matrix {
        rows: usize,
        cols: usize,
        data: &'a [u8],
    },
}

/// Serialises `value` as cPickle protocol 2 would, `numpy_core` naming numpy's core module
/// (`numpy.core` for numpy 1, as in the real archives).
pub fn dumps(value: &Value<'_>, numpy_core: &str) -> Vec<u8> {
    let mut writer = Writer {
        out: Vec::with_capacity(estimate(value)),
        memo: 0,
        numpy_core,
    };
    writer.out.extend_from_slice(&[PROTO, 2]);
    writer.save(value, true);
    writer.out.push(STOP);
    writer.out
}

fn estimate(value: &Value<'_>) -> usize {
    match value {
        Value::Str(s) => s.len() + 8,
        Value::Int(_) => 5,
        Value::List(items) => items.iter().map(estimate).sum::<usize>() + 16,
        Value::Dict(items) => items
            .iter()
            .map(|(k, v)| k.len() + 8 + estimate(v))
            .sum::<usize>(),
        Value::U8Matrix { data, .. } => data.len() + 160,
    }
}

struct Writer<'n> {
    out: Vec<u8>,
    memo: u32,
    numpy_core: &'n str,
}

impl Writer<'_> {
    fn put(&mut self) {
        self.memo += 1;
        match u8::try_from(self.memo) {
            Ok(idx) => self.out.extend_from_slice(&[BINPUT, idx]),
            Err(_) => {
                self.out.push(LONG_BINPUT);
                self.out.extend_from_slice(&self.memo.to_le_bytes());
            }
        }
    }

    /// `shared`: the object has another reference besides its container (list and dict items do,
    /// through the iterator), so cPickle memoises it.
    fn save(&mut self, value: &Value<'_>, shared: bool) {
        match value {
            Value::Str(s) => self.save_str(s, shared),
            Value::Int(v) => self.save_int(*v),
            Value::List(items) => {
                self.out.push(EMPTY_LIST);
                self.put();
                for chunk in items.chunks(BATCH) {
                    if let [item] = chunk {
                        self.save(item, true);
                        self.out.push(APPEND);
                    } else {
                        self.out.push(MARK);
                        for item in chunk {
                            self.save(item, true);
                        }
                        self.out.push(APPENDS);
                    }
                }
            }
            Value::Dict(items) => {
                self.out.push(EMPTY_DICT);
                self.put();
                for chunk in items.chunks(BATCH) {
                    let single = chunk.len() == 1;
                    if !single {
                        self.out.push(MARK);
                    }
                    for (key, item) in chunk {
                        self.save_str(key.as_bytes(), true);
                        self.save(item, true);
                    }
                    self.out.push(if single { SETITEM } else { SETITEMS });
                }
            }
            Value::U8Matrix { rows, cols, data } => self.save_u8_matrix(*rows, *cols, data),
        }
    }

    fn save_str(&mut self, s: &[u8], shared: bool) {
        match u8::try_from(s.len()) {
            Ok(len) => self.out.extend_from_slice(&[SHORT_BINSTRING, len]),
            Err(_) => {
                self.out.push(BINSTRING);
                let len = u32::try_from(s.len()).expect("a pickled str fits in 4 GiB");
                self.out.extend_from_slice(&len.to_le_bytes());
            }
        }
        self.out.extend_from_slice(s);
        if shared && s.len() >= 2 {
            self.put();
        }
    }

    fn save_int(&mut self, v: i64) {
        if let Ok(b) = u8::try_from(v) {
            self.out.extend_from_slice(&[BININT1, b]);
        } else if let Ok(w) = u16::try_from(v) {
            self.out.push(BININT2);
            self.out.extend_from_slice(&w.to_le_bytes());
        } else {
            let i = i32::try_from(v).expect("CIFAR integers fit in 32 bits");
            self.out.push(BININT);
            self.out.extend_from_slice(&i.to_le_bytes());
        }
    }

    fn global(&mut self, module: &str, name: &str) {
        self.out.push(GLOBAL);
        self.out.extend_from_slice(module.as_bytes());
        self.out.push(b'\n');
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'\n');
        self.put();
    }

    fn save_u8_matrix(&mut self, rows: usize, cols: usize, data: &[u8]) {
        assert_eq!(rows * cols, data.len(), "matrix shape matches its data");
        let multiarray = format!("{}.multiarray", self.numpy_core);
        self.global(&multiarray, "_reconstruct");
        self.global("numpy", "ndarray");
        self.save_int(0);
        self.out.push(TUPLE1);
        self.save_str(b"b", false);
        self.out.push(TUPLE3);
        self.out.push(REDUCE);
        self.put();
        // state: (1, (rows, cols), dtype, False, raw)
        self.out.push(MARK);
        self.save_int(1);
        self.save_int(rows as i64);
        self.save_int(cols as i64);
        self.out.push(TUPLE2);
        self.global("numpy", "dtype");
        self.save_str(b"u1", false);
        self.save_int(0);
        self.save_int(1);
        self.out.push(TUPLE3);
        self.out.push(REDUCE);
        self.put();
        self.out.push(MARK);
        self.save_int(3);
        self.save_str(b"|", false);
        self.out.extend_from_slice(&[NONE, NONE, NONE]);
        self.save_int(-1);
        self.save_int(-1);
        self.save_int(0);
        self.out.push(TUPLE);
        self.out.push(BUILD);
        self.out.push(NEWFALSE);
        self.save_str(data, false);
        self.out.push(TUPLE);
        self.out.push(BUILD);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ints_use_the_shortest_opcode() {
        let list = Value::List(vec![Value::Int(9), Value::Int(10000), Value::Int(-1)]);
        let bytes = dumps(&list, "numpy.core");
        assert_eq!(
            bytes,
            [
                0x80, 2, b']', b'q', 1, b'(', b'K', 9, b'M', 0x10, 0x27, b'J', 0xff, 0xff, 0xff,
                0xff, b'e', b'.'
            ]
        );
    }

    #[test]
    fn a_list_of_one_uses_append_and_long_lists_come_in_batches_of_1000() {
        let one = dumps(&Value::List(vec![Value::Int(1)]), "numpy.core");
        assert_eq!(one, [0x80, 2, b']', b'q', 1, b'K', 1, b'a', b'.']);
        let many = dumps(&Value::List(vec![Value::Int(0); 2001]), "numpy.core");
        assert_eq!(many.iter().filter(|&&b| b == APPENDS).count(), 2);
        assert_eq!(many[many.len() - 2], APPEND);
    }
}
