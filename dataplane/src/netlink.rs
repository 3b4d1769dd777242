//! The kernel calls of the route announcement ([`crate::announce`]): a TUN
//! device whose life is the process's, and routes through it added to and
//! removed from a kernel routing table over rtnetlink.
//!
//! The one module besides `cpu` and `io` that holds `unsafe` code: `open`,
//! `ioctl` and the netlink socket calls, each with its SAFETY note. Nothing
//! here runs on the fast path.

use std::ffi::CString;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `rtm_protocol` of our routes (not one of the kernel's own values, so
/// routing daemons and `ip route show proto 201` can tell them apart).
pub const RTPROT_DPGW: u8 = 201;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// A non-persistent TUN device: the kernel deletes it, and every route
/// through it, when the last descriptor closes, which happens when the
/// process exits for any reason (SIGKILL included).
#[derive(Debug)]
pub struct Tun {
    fd: OwnedFd,
    name: String,
    index: u32,
}

#[repr(C)]
struct IfReqFlags {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

fn ifreq(name: &str, flags: libc::c_short) -> io::Result<IfReqFlags> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not an interface name (1-15 characters, no '/' or spaces)"),
        ));
    }
    let mut r = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags,
        _pad: [0; 22],
    };
    for (d, s) in r.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

impl Tun {
    /// Creates TUN device `name` and brings it up.
    pub fn create(name: &str) -> io::Result<Tun> {
        let mut req = ifreq(name, IFF_TUN | IFF_NO_PI)?;
        let path = CString::new("/dev/net/tun").expect("no NUL");
        // SAFETY: `path` is a valid NUL-terminated string; the returned
        // descriptor is checked and then owned by `OwnedFd`.
        let raw = unsafe {
            libc::open(
                path.as_ptr(),
                libc::O_RDWR | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is one
        // (name, flags, padding to the union's 24 bytes) and outlives the call.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReqFlags) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let cname = CString::new(name).expect("checked above");
        // SAFETY: `cname` is a valid NUL-terminated string.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error());
        }
        let tun = Tun {
            fd,
            name: name.to_string(),
            index,
        };
        tun.set_up()?;
        Ok(tun)
    }

    fn set_up(&self) -> io::Result<()> {
        // SAFETY: a plain socket call; the descriptor is owned below.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        let mut req = ifreq(&self.name, 0)?;
        // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read/write a `struct ifreq`
        // (name + flags); `req` is one and outlives both calls.
        unsafe {
            if libc::ioctl(
                sock.as_raw_fd(),
                libc::SIOCGIFFLAGS,
                &mut req as *mut IfReqFlags,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
            req.flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(
                sock.as_raw_fd(),
                libc::SIOCSIFFLAGS,
                &mut req as *mut IfReqFlags,
            ) < 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    /// Reads and discards what the kernel queued on the device (IPv6 router
    /// solicitations and the like), so its queue does not sit full.
    pub fn discard_queued(&self) {
        let mut buf = [0u8; 2048];
        for _ in 0..64 {
            // SAFETY: `buf` is valid for `buf.len()` bytes; the descriptor is
            // non-blocking.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                )
            };
            if n <= 0 {
                break;
            }
        }
    }
}

/// A route through a device: `prefix/len dev <ifindex> table <table> proto 201`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub addr: IpAddr,
    pub len: u8,
    pub ifindex: u32,
    pub table: u32,
    pub metric: u32,
}

/// An rtnetlink socket for route changes (each acknowledged).
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

const NLMSG_ERROR: u16 = 2;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_PRIORITY: u16 = 6;
const RTA_TABLE: u16 = 15;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
const RT_TABLE_COMPAT: u8 = 252;

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: a plain socket call; the descriptor is owned below.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: SO_RCVTIMEO takes a `timeval`, passed with its size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink { fd, seq: 1 })
    }

    /// Adds (or replaces) `r`.
    pub fn add_route(&mut self, r: &Route) -> io::Result<()> {
        let m = self.route_msg(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, r);
        self.request(&m)
    }

    /// Removes `r`; a route that is not there is not an error.
    pub fn del_route(&mut self, r: &Route) -> io::Result<()> {
        let m = self.route_msg(RTM_DELROUTE, 0, r);
        match self.request(&m) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            other => other,
        }
    }

    fn route_msg(&mut self, kind: u16, flags: u16, r: &Route) -> Vec<u8> {
        self.seq = self.seq.wrapping_add(1);
        let (family, addr): (u8, Vec<u8>) = match r.addr {
            IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
            IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
        };
        let mut m = Vec::with_capacity(64);
        m.extend_from_slice(&[0; 4]); // length, below
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
        m.extend_from_slice(&self.seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        // struct rtmsg
        let table8 = if r.table < 256 {
            r.table as u8
        } else {
            RT_TABLE_COMPAT
        };
        m.extend_from_slice(&[
            family,
            r.len,
            0,
            0,
            table8,
            RTPROT_DPGW,
            RT_SCOPE_LINK,
            RTN_UNICAST,
        ]);
        m.extend_from_slice(&0u32.to_ne_bytes());
        attr(&mut m, RTA_DST, &addr);
        attr(&mut m, RTA_OIF, &r.ifindex.to_ne_bytes());
        attr(&mut m, RTA_TABLE, &r.table.to_ne_bytes());
        attr(&mut m, RTA_PRIORITY, &r.metric.to_ne_bytes());
        let len = m.len() as u32;
        m[0..4].copy_from_slice(&len.to_ne_bytes());
        m
    }

    fn request(&mut self, m: &[u8]) -> io::Result<()> {
        // SAFETY: `sockaddr_nl` is plain data; zeroed = the kernel as peer.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `m` and `sa` are valid for the lengths passed.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                m.as_ptr() as *const libc::c_void,
                m.len(),
                0,
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: `buf` is valid for its length; SO_RCVTIMEO bounds the wait.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let got = &buf[..n as usize];
            let mut off = 0;
            while off + 16 <= got.len() {
                let len = u32::from_ne_bytes(got[off..off + 4].try_into().expect("4")) as usize;
                let kind = u16::from_ne_bytes(got[off + 4..off + 6].try_into().expect("2"));
                let seq = u32::from_ne_bytes(got[off + 8..off + 12].try_into().expect("4"));
                if len < 16 || off + len > got.len() {
                    break;
                }
                if kind == NLMSG_ERROR && seq == self.seq && len >= 20 {
                    let err = i32::from_ne_bytes(got[off + 16..off + 20].try_into().expect("4"));
                    return if err == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::from_raw_os_error(-err))
                    };
                }
                off += (len + 3) & !3;
            }
        }
    }
}

fn attr(m: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    m.extend_from_slice(&(len as u16).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(data);
    while !m.len().is_multiple_of(4) {
        m.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_route_message_layout() {
        // Built without a socket: the bytes the kernel will parse.
        let mut nl = Netlink {
            fd: std::fs::File::open("/dev/null").expect("null").into(),
            seq: 7,
        };
        let r = Route {
            addr: "10.0.0.100".parse().expect("ip"),
            len: 32,
            ifindex: 9,
            table: 4242,
            metric: 0,
        };
        let m = nl.route_msg(RTM_NEWROUTE, NLM_F_CREATE, &r);
        assert_eq!(m.len(), 16 + 12 + 8 * 4);
        assert_eq!(
            u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize,
            m.len()
        );
        assert_eq!(u32::from_ne_bytes(m[8..12].try_into().unwrap()), 8);
        assert_eq!(&m[16..24], &[2, 32, 0, 0, RT_TABLE_COMPAT, 201, 253, 1]);
        // RTA_DST 10.0.0.100
        assert_eq!(&m[28..36], &[8, 0, 1, 0, 10, 0, 0, 100]);
        // RTA_TABLE carries the full id.
        assert_eq!(&m[44..52], &[8, 0, 15, 0, 0x92, 0x10, 0, 0]);
    }

    #[test]
    fn test_bad_interface_names_are_refused() {
        for n in ["", "a-name-that-is-too-long", "a/b", "a b"] {
            assert!(ifreq(n, 0).is_err(), "{n:?}");
        }
        assert!(ifreq("dpgw-announce", 0).is_ok());
    }
}
