//! A cheap pass over a pickle's opcodes, before any byte reaches serde-pickle.
//!
//! serde-pickle has no depth limit (deeply nested lists overflow the stack and abort the process) and
//! clones memoised values on every reference (a small input can expand to gigabytes). This scan runs
//! the pickle's stack machine on summaries (nesting depth and materialised size of each object, the
//! text of short strings) and refuses, with the offset: nesting deeper than [`Limits::max_depth`],
//! memo references that would materialise more than [`Limits::max_expansion`] bytes, any opcode a
//! CIFAR batch never has (protocol 0/1 text opcodes, floats, sets, object instantiation, extension
//! codes, persistent ids, out-of-band buffers), any global other than numpy's array and dtype
//! reconstructors and `_codecs.encode`, a numpy dtype other than `u1`, and malformed streams
//! (truncated arguments, stack underflow, missing memo entries, bytes after STOP).

use std::collections::BTreeMap;

/// Bounds for [`scan`].
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Deepest nesting of containers (a CIFAR batch has 3: dict → tuple → tuple).
    pub max_depth: u32,
    /// Bytes that memo references (`GET`) may materialise in total.
    pub max_expansion: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: 32,
            max_expansion: 64 << 20,
        }
    }
}

/// What the scan learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    pub protocol: u8,
}

/// Why a pickle was refused: what, and at which byte offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("offset {offset}: {reason}")]
pub struct Refusal {
    pub offset: usize,
    pub reason: String,
}

/// The globals a CIFAR pickle may name (module, name).
const GLOBALS: [(&str, &str); 7] = [
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
];

/// Short strings are remembered (for STACK_GLOBAL and the dtype check) up to this length.
const TEXT: usize = 64;
/// What one object costs beyond its bytes, roughly (serde-pickle's `Value` and its allocation).
const NODE: u64 = 48;

#[derive(Debug, Clone)]
enum Kind {
    Plain,
    Text(Vec<u8>),
    Global(&'static str, &'static str),
    /// A tuple, with the text of its first item when that is a short string.
    Tuple(Option<Vec<u8>>),
}

#[derive(Debug, Clone)]
struct Obj {
    depth: u32,
    size: u64,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Item {
    Mark,
    Obj(Obj),
}

struct Machine<'a> {
    bytes: &'a [u8],
    pos: usize,
    /// Offset of the opcode being run, for messages.
    at: usize,
    stack: Vec<Item>,
    memo: BTreeMap<u32, Obj>,
    expansion: u64,
    limits: Limits,
}

/// Scans `bytes` as a pickle; see the module documentation for what is refused.
pub fn scan(bytes: &[u8], limits: Limits) -> Result<Scan, Refusal> {
    let mut machine = Machine {
        bytes,
        pos: 0,
        at: 0,
        stack: Vec::new(),
        memo: BTreeMap::new(),
        expansion: 0,
        limits,
    };
    machine.run()
}

fn obj(depth: u32, size: u64, kind: Kind) -> Obj {
    Obj { depth, size, kind }
}

fn scalar() -> Obj {
    obj(1, NODE, Kind::Plain)
}

impl Machine<'_> {
    fn refuse<T>(&self, reason: impl Into<String>) -> Result<T, Refusal> {
        Err(Refusal {
            offset: self.at,
            reason: reason.into(),
        })
    }

    fn take(&mut self, n: usize) -> Result<&[u8], Refusal> {
        match self.bytes.get(self.pos..).filter(|rest| rest.len() >= n) {
            Some(rest) => {
                self.pos += n;
                Ok(&rest[..n])
            }
            None => self.refuse(format!(
                "truncated: {n} bytes of argument wanted, {} left",
                self.bytes.len() - self.pos
            )),
        }
    }

    fn uint(&mut self, n: usize) -> Result<u64, Refusal> {
        let mut buf = [0u8; 8];
        buf[..n].copy_from_slice(self.take(n)?);
        Ok(u64::from_le_bytes(buf))
    }

    fn line(&mut self) -> Result<Vec<u8>, Refusal> {
        let rest = &self.bytes[self.pos..];
        match rest.iter().take(256).position(|&b| b == b'\n') {
            Some(end) => {
                self.pos += end + 1;
                Ok(rest[..end].to_vec())
            }
            None => self.refuse("a GLOBAL name without its newline within 256 bytes"),
        }
    }

    fn push(&mut self, item: Obj) -> Result<(), Refusal> {
        if item.depth > self.limits.max_depth {
            return self.refuse(format!(
                "nesting deeper than {} levels",
                self.limits.max_depth
            ));
        }
        self.stack.push(Item::Obj(item));
        Ok(())
    }

    fn pop(&mut self) -> Result<Obj, Refusal> {
        match self.stack.pop() {
            Some(Item::Obj(o)) => Ok(o),
            Some(Item::Mark) => self.refuse("a MARK where an object was expected"),
            None => self.refuse("stack underflow"),
        }
    }

    fn top(&mut self) -> Result<&mut Obj, Refusal> {
        match self.stack.last_mut() {
            Some(Item::Obj(o)) => Ok(o),
            Some(Item::Mark) => Err(Refusal {
                offset: self.at,
                reason: "a MARK where an object was expected".into(),
            }),
            None => Err(Refusal {
                offset: self.at,
                reason: "stack underflow".into(),
            }),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Obj>, Refusal> {
        let mut items = Vec::new();
        loop {
            match self.stack.pop() {
                Some(Item::Obj(o)) => items.push(o),
                Some(Item::Mark) => {
                    items.reverse();
                    return Ok(items);
                }
                None => return self.refuse("no MARK to pop to"),
            }
        }
    }

    /// Folds `items` into the container on top of the stack.
    fn extend_top(&mut self, items: &[Obj]) -> Result<(), Refusal> {
        let depth = items.iter().map(|o| o.depth + 1).max().unwrap_or(0);
        let size: u64 = items.iter().map(|o| o.size).sum();
        let top = self.top()?;
        top.depth = top.depth.max(depth);
        top.size = top.size.saturating_add(size);
        let depth = top.depth;
        if depth > self.limits.max_depth {
            return self.refuse(format!(
                "nesting deeper than {} levels",
                self.limits.max_depth
            ));
        }
        Ok(())
    }

    fn tuple(&mut self, items: Vec<Obj>) -> Result<(), Refusal> {
        let first = match items.first().map(|o| &o.kind) {
            Some(Kind::Text(t)) => Some(t.clone()),
            _ => None,
        };
        let depth = items.iter().map(|o| o.depth + 1).max().unwrap_or(1);
        let size = items.iter().map(|o| o.size).sum::<u64>() + NODE;
        self.push(obj(depth, size, Kind::Tuple(first)))
    }

    fn text(&mut self, len: u64) -> Result<(), Refusal> {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        let bytes = self.take(len)?;
        let kind = if bytes.len() <= TEXT {
            Kind::Text(bytes.to_vec())
        } else {
            Kind::Plain
        };
        self.push(obj(1, len as u64 + NODE, kind))
    }

    fn global(&mut self, module: &[u8], name: &[u8]) -> Result<(), Refusal> {
        match GLOBALS
            .iter()
            .find(|(m, n)| m.as_bytes() == module && n.as_bytes() == name)
        {
            Some(&(m, n)) => self.push(obj(1, NODE, Kind::Global(m, n))),
            None => self.refuse(format!(
                "global {}.{} is not one a CIFAR pickle uses",
                String::from_utf8_lossy(module),
                String::from_utf8_lossy(name)
            )),
        }
    }

    fn memo_put(&mut self, id: u32) -> Result<(), Refusal> {
        let top = self.top()?.clone();
        self.memo.insert(id, top);
        Ok(())
    }

    fn memo_get(&mut self, id: u32) -> Result<(), Refusal> {
        let Some(item) = self.memo.get(&id).cloned() else {
            return self.refuse(format!("memo entry {id} was never stored"));
        };
        self.expansion = self.expansion.saturating_add(item.size);
        if self.expansion > self.limits.max_expansion {
            return self.refuse(format!(
                "memo references would copy more than {} bytes",
                self.limits.max_expansion
            ));
        }
        self.push(item)
    }

    fn run(&mut self) -> Result<Scan, Refusal> {
        if self.bytes.first() != Some(&0x80) {
            return self.refuse("not a pickle of protocol 2 or later (no PROTO opcode first)");
        }
        let mut protocol = 0;
        loop {
            self.at = self.pos;
            let Some(&op) = self.bytes.get(self.pos) else {
                return self.refuse("the pickle ends without STOP");
            };
            self.pos += 1;
            match op {
                0x80 => {
                    // PROTO
                    if self.at != 0 {
                        return self.refuse("PROTO after the start");
                    }
                    protocol = self.take(1)?[0];
                    if !(2..=5).contains(&protocol) {
                        return self
                            .refuse(format!("pickle protocol {protocol} (2 to 5 are read)"));
                    }
                }
                0x95 => {
                    // FRAME: framing is transparent; its length only has to be plausible.
                    let len = self.uint(8)?;
                    if len > (self.bytes.len() - self.pos) as u64 {
                        return self.refuse("a FRAME longer than the rest of the pickle");
                    }
                }
                b'.' => {
                    // STOP
                    if self.pos != self.bytes.len() {
                        return self
                            .refuse(format!("{} bytes after STOP", self.bytes.len() - self.pos));
                    }
                    self.pop()?;
                    if !self.stack.is_empty() {
                        return self.refuse("objects left on the stack at STOP");
                    }
                    return Ok(Scan { protocol });
                }
                b'(' => self.stack.push(Item::Mark),
                b'}' | b']' | b')' => self.push(obj(1, NODE, Kind::Plain))?,
                b'q' => {
                    let id = self.uint(1)? as u32;
                    self.memo_put(id)?;
                }
                b'r' => {
                    let id = self.uint(4)? as u32;
                    self.memo_put(id)?;
                }
                0x94 => {
                    // MEMOIZE
                    let id = u32::try_from(self.memo.len()).unwrap_or(u32::MAX);
                    self.memo_put(id)?;
                }
                b'h' => {
                    let id = self.uint(1)? as u32;
                    self.memo_get(id)?;
                }
                b'j' => {
                    let id = self.uint(4)? as u32;
                    self.memo_get(id)?;
                }
                b'N' | 0x88 | 0x89 => self.push(scalar())?,
                b'K' => {
                    self.take(1)?;
                    self.push(scalar())?;
                }
                b'M' => {
                    self.take(2)?;
                    self.push(scalar())?;
                }
                b'J' => {
                    self.take(4)?;
                    self.push(scalar())?;
                }
                0x8a => {
                    // LONG1: CIFAR integers fit in 8 bytes.
                    let n = self.take(1)?[0] as usize;
                    if n > 8 {
                        return self.refuse(format!("a {n}-byte integer"));
                    }
                    self.take(n)?;
                    self.push(scalar())?;
                }
                b'U' | b'C' | 0x8c => {
                    // SHORT_BINSTRING, SHORT_BINBYTES, SHORT_BINUNICODE
                    let len = self.uint(1)?;
                    self.text(len)?;
                }
                b'T' | b'B' | b'X' => {
                    // BINSTRING, BINBYTES, BINUNICODE
                    let len = self.uint(4)?;
                    self.text(len)?;
                }
                0x8e | 0x8d | 0x96 => {
                    // BINBYTES8, BINUNICODE8, BYTEARRAY8
                    let len = self.uint(8)?;
                    self.text(len)?;
                }
                0x85..=0x87 => {
                    let n = usize::from(op - 0x84);
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    self.tuple(items)?;
                }
                b't' => {
                    let items = self.pop_mark()?;
                    self.tuple(items)?;
                }
                b'a' => {
                    let item = self.pop()?;
                    self.extend_top(&[item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.extend_top(&items)?;
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    self.extend_top(&[key, value])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return self.refuse("SETITEMS with an odd number of items");
                    }
                    self.extend_top(&items)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(&module, &name)?;
                }
                0x93 => {
                    // STACK_GLOBAL
                    let name = self.pop()?;
                    let module = self.pop()?;
                    match (module.kind, name.kind) {
                        (Kind::Text(module), Kind::Text(name)) => self.global(&module, &name)?,
                        _ => return self.refuse("STACK_GLOBAL without two strings"),
                    }
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let Kind::Global(module, name) = callable.kind else {
                        return self.refuse("REDUCE of something that is not a known global");
                    };
                    if (module, name) == ("numpy", "dtype") {
                        match &args.kind {
                            Kind::Tuple(Some(t)) if t == b"u1" || t == b"|u1" => {}
                            Kind::Tuple(Some(t)) => {
                                return self.refuse(format!(
                                    "numpy dtype {:?}, expected u1 (uint8)",
                                    String::from_utf8_lossy(t)
                                ));
                            }
                            _ => return self.refuse("numpy dtype without a type name"),
                        }
                    }
                    self.push(obj(args.depth + 1, args.size + NODE, Kind::Plain))?;
                }
                b'b' => {
                    let state = self.pop()?;
                    self.pop()?;
                    self.push(state)?;
                }
                other => {
                    return self.refuse(format!(
                        "opcode {} ({other:#04x}) is not one a CIFAR pickle uses",
                        opcode_name(other)
                    ));
                }
            }
        }
    }
}

fn opcode_name(op: u8) -> &'static str {
    match op {
        b'I' => "INT",
        b'L' => "LONG",
        b'F' => "FLOAT",
        b'G' => "BINFLOAT",
        b'S' => "STRING",
        b'V' => "UNICODE",
        b'p' => "PUT",
        b'g' => "GET",
        b'0' => "POP",
        b'1' => "POP_MARK",
        b'2' => "DUP",
        b'i' => "INST",
        b'o' => "OBJ",
        0x81 => "NEWOBJ",
        0x92 => "NEWOBJ_EX",
        0x82..=0x84 => "EXT",
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'l' => "LIST",
        b'd' => "DICT",
        0x8b => "LONG4",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(bytes: &[u8]) -> String {
        scan(bytes, Limits::default()).unwrap_err().to_string()
    }

    #[test]
    fn a_small_dict_passes() {
        let ok = b"\x80\x02}q\x01(U\x01aK\x01U\x02bbq\x02]q\x03(K\x01K\x02eu.";
        assert_eq!(scan(ok, Limits::default()), Ok(Scan { protocol: 2 }));
    }

    #[test]
    fn deep_nesting_is_refused_before_it_can_overflow_a_stack() {
        let mut bytes = b"\x80\x02".to_vec();
        bytes.extend(std::iter::repeat_n(b']', 10_000));
        bytes.extend(std::iter::repeat_n(b'a', 9_999));
        bytes.push(b'.');
        assert_eq!(
            refusal(&bytes),
            "offset 10033: nesting deeper than 32 levels"
        );
    }

    #[test]
    fn memo_references_that_would_copy_too_much_are_refused() {
        // A 1 MB string, memoised, then referenced 100 times in a list.
        let mut bytes = b"\x80\x02]B\x00\x00\x10\x00".to_vec();
        bytes.extend(std::iter::repeat_n(0u8, 1 << 20));
        bytes.extend(b"q\x01a]");
        for _ in 0..100 {
            bytes.extend(b"h\x01a");
        }
        bytes.push(b'.');
        let limits = Limits {
            max_expansion: 16 << 20,
            ..Limits::default()
        };
        let err = scan(&bytes, limits).unwrap_err();
        assert!(err.reason.contains("would copy more than"), "{err}");
    }

    #[test]
    fn foreign_globals_and_opcodes_are_refused_by_name() {
        assert_eq!(
            refusal(b"\x80\x02cos\nsystem\nU\x02lsR."),
            "offset 2: global os.system is not one a CIFAR pickle uses"
        );
        assert_eq!(
            refusal(b"\x80\x02G@\x09!\xfbTD-\x18."),
            "offset 2: opcode BINFLOAT (0x47) is not one a CIFAR pickle uses"
        );
        assert!(refusal(b"\x80\x02cnumpy\ndtype\nU\x02f8K\x00K\x01\x87R.").contains("f8"));
    }

    #[test]
    fn malformed_streams_are_refused() {
        assert!(refusal(b"(dp0\n.").contains("no PROTO"));
        assert!(refusal(b"\x80\x02K").contains("truncated"));
        assert!(refusal(b"\x80\x02a.").contains("underflow"));
        assert!(refusal(b"\x80\x02h\x05.").contains("never stored"));
        assert!(refusal(b"\x80\x02N.junk").contains("4 bytes after STOP"));
        assert!(refusal(b"\x80\x02N").contains("without STOP"));
        assert!(refusal(b"\x80\x01N.").contains("protocol 1"));
    }
}
