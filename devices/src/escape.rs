//! The console escape sequence, as a pure state machine over the bytes read from the
//! terminal: Ctrl-A x quits, Ctrl-A i prints the state dump, Ctrl-A Ctrl-A sends one
//! Ctrl-A to the guest, and Ctrl-A followed by anything else sends both bytes unchanged
//! (nothing typed is lost). A Ctrl-A at the end of one read waits for the next read.
pub const CTRL_A: u8 = 0x01;

/// What the terminal's bytes mean.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Bytes for the guest.
    Bytes(Vec<u8>),
    /// The user asked to quit (Ctrl-A x).
    Quit,
    /// The user asked for the state dump (Ctrl-A i).
    Dump,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct Escape {
    /// A Ctrl-A was seen and the next byte decides.
    armed: bool,
}

impl Escape {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a Ctrl-A is waiting for its second byte.
    pub fn is_armed(&self) -> bool {
        self.armed
    }

    /// Interprets one read's bytes. Guest bytes come out in order, merged into as few
    /// `Bytes` as possible; `Quit` is the last item when present (what follows it is
    /// dropped).
    pub fn feed(&mut self, input: &[u8]) -> Vec<Input> {
        let mut out = Vec::new();
        let mut bytes = Vec::with_capacity(input.len());
        for &b in input {
            if std::mem::take(&mut self.armed) {
                match b {
                    b'x' => {
                        if !bytes.is_empty() {
                            out.push(Input::Bytes(bytes));
                        }
                        out.push(Input::Quit);
                        return out;
                    }
                    b'i' => {
                        if !bytes.is_empty() {
                            out.push(Input::Bytes(std::mem::take(&mut bytes)));
                        }
                        out.push(Input::Dump);
                    }
                    CTRL_A => bytes.push(CTRL_A),
                    other => bytes.extend_from_slice(&[CTRL_A, other]),
                }
            } else if b == CTRL_A {
                self.armed = true;
            } else {
                bytes.push(b);
            }
        }
        if !bytes.is_empty() {
            out.push(Input::Bytes(bytes));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(b: &[u8]) -> Input {
        Input::Bytes(b.to_vec())
    }

    #[test]
    fn plain_bytes_pass_through() {
        let mut e = Escape::new();
        assert_eq!(e.feed(b"ls -l\r"), [bytes(b"ls -l\r")]);
        assert_eq!(e.feed(b""), []);
    }

    #[test]
    fn ctrl_a_x_quits_and_drops_the_rest() {
        let mut e = Escape::new();
        assert_eq!(e.feed(b"ab\x01xcd"), [bytes(b"ab"), Input::Quit]);
        assert_eq!(Escape::new().feed(b"\x01x"), [Input::Quit]);
    }

    #[test]
    fn ctrl_a_twice_sends_one() {
        let mut e = Escape::new();
        assert_eq!(e.feed(b"a\x01\x01b"), [bytes(b"a\x01b")]);
        assert_eq!(e.feed(b"\x01\x01\x01\x01"), [bytes(b"\x01\x01")]);
    }

    #[test]
    fn other_escapes_pass_both_bytes() {
        let mut e = Escape::new();
        assert_eq!(e.feed(b"\x01c\x01X"), [bytes(b"\x01c\x01X")]);
    }

    #[test]
    fn ctrl_a_i_asks_for_the_dump_in_order() {
        let mut e = Escape::new();
        assert_eq!(e.feed(b"ab\x01icd"), [bytes(b"ab"), Input::Dump, bytes(b"cd")]);
        assert_eq!(e.feed(b"\x01"), []);
        assert_eq!(e.feed(b"i"), [Input::Dump]);
    }

    #[test]
    fn escape_split_across_reads() {
        let mut e = Escape::new();
        assert_eq!(e.feed(b"q\x01"), [bytes(b"q")]);
        assert!(e.is_armed());
        assert_eq!(e.feed(b"x"), [Input::Quit]);
        let mut e = Escape::new();
        assert_eq!(e.feed(b"\x01"), []);
        assert_eq!(e.feed(b"\x01"), [bytes(b"\x01")]);
        assert!(!e.is_armed());
    }
}
