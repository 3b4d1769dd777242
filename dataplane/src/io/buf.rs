//! [`HeapBuf`]: the heap packet buffer of the backends that copy frames in
//! (pcap replay, AF_PACKET), with headroom for encapsulation.

use super::Packet;

/// Bytes kept free in front of every received frame for encapsulation.
pub const HEADROOM: usize = 256;
/// Bytes kept free after every frame (for in-place replies).
pub const TAILROOM: usize = 128;
/// A heap packet buffer with headroom.
#[derive(Debug)]
pub struct HeapBuf {
    buf: Box<[u8]>,
    off: usize,
    len: usize,
    ts_ns: u64,
}

impl HeapBuf {
    pub fn with_capacity(max_frame: usize) -> HeapBuf {
        HeapBuf {
            buf: vec![0u8; HEADROOM + max_frame + TAILROOM].into_boxed_slice(),
            off: HEADROOM,
            len: 0,
            ts_ns: 0,
        }
    }

    /// Loads a frame (resets the headroom).
    #[inline]
    pub fn load(&mut self, frame: &[u8], ts_ns: u64) {
        self.off = HEADROOM;
        self.len = frame.len();
        self.buf[HEADROOM..HEADROOM + frame.len()].copy_from_slice(frame);
        self.ts_ns = ts_ns;
    }

    /// Fills the buffer with a frame of `len` bytes written by `write` (which
    /// returns how many bytes it wrote, or `None` to give up). False, and the
    /// buffer empty, if `len` does not fit or `write` gave up.
    pub fn load_with(
        &mut self,
        len: usize,
        write: impl FnOnce(&mut [u8]) -> Option<usize>,
    ) -> bool {
        self.off = HEADROOM;
        self.len = 0;
        self.ts_ns = 0;
        if HEADROOM + len + TAILROOM > self.buf.len() {
            return false;
        }
        match write(&mut self.buf[HEADROOM..HEADROOM + len]) {
            Some(n) if n <= len => {
                self.len = n;
                true
            }
            _ => false,
        }
    }

    pub fn ts_ns(&self) -> u64 {
        self.ts_ns
    }

    /// Bytes free after the data.
    #[inline(always)]
    pub fn tailroom(&self) -> usize {
        self.buf.len() - self.off - self.len
    }

    /// Grows the data by `n` bytes at the end; false (and unchanged) without tailroom.
    #[inline(always)]
    pub fn append(&mut self, n: usize) -> bool {
        if n > self.tailroom() {
            return false;
        }
        self.len += n;
        true
    }
}

impl Packet for HeapBuf {
    #[inline(always)]
    fn data(&self) -> &[u8] {
        &self.buf[self.off..self.off + self.len]
    }
    #[inline(always)]
    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.off..self.off + self.len]
    }
    #[inline(always)]
    fn headroom(&self) -> usize {
        self.off
    }
    #[inline(always)]
    fn adj(&mut self, n: usize) {
        assert!(n <= self.len, "adj past the end of the packet");
        self.off += n;
        self.len -= n;
    }
    #[inline(always)]
    fn prepend(&mut self, n: usize) -> bool {
        if n > self.off {
            return false;
        }
        self.off -= n;
        self.len += n;
        true
    }
    #[inline(always)]
    fn trim(&mut self, len: usize) {
        if len < self.len {
            self.len = len;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_heapbuf_room() {
        let mut b = HeapBuf::with_capacity(100);
        b.load(&[1, 2, 3, 4], 0);
        assert_eq!(b.headroom(), HEADROOM);
        b.adj(2);
        assert_eq!(b.data(), &[3, 4]);
        assert!(b.prepend(HEADROOM + 2));
        assert!(!b.prepend(1));
        assert_eq!(b.data().len(), HEADROOM + 4);
        b.trim(3);
        assert_eq!(b.data().len(), 3);
        let t = b.tailroom();
        assert!(b.append(t));
        assert!(!b.append(1));
    }
}
