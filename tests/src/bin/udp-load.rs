//! UDP load generator and echo server for `tests/bench/udp.sh` (Python cannot drive a relay faster than
//! socat). Both move datagrams with `recvmmsg`/`sendmmsg`, up to 32 per system call but each its own
//! datagram (no segmentation offload), so the load side spends as little CPU as it can per datagram while
//! sending what real peers send.
//!
//! Usage:
//! - `udp-load echo --listen ADDR`: sends every datagram back to its sender, until killed.
//! - `udp-load send --target ADDR [--size BYTES] [--window N] [--duration S] [--warmup S]`: keeps N
//!   datagrams (default 32) of BYTES (default 200, at least 16) in flight to ADDR from one socket (one flow),
//!   each carrying a sequence number and its send time; every echo sends the next one. After the warm-up
//!   (default 0.5 s: lets a relay open its flow, socat fork its child) it measures for S seconds (default 5)
//!   and prints one JSON line:
//!   `{"sent","received","lost","late","errors","seconds","pps","p50_us","p99_us","all_received"}` (`pps` =
//!   echoes received per second; `late` = echoes of datagrams already counted lost; `errors` = ICMP errors
//!   seen on the socket, e.g. nothing listening: those datagrams count as lost too; `all_received` includes
//!   the warm-up, for dividing a relay's CPU time over the whole run).

use std::collections::HashMap;
use std::io::{ErrorKind, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: udp-load echo --listen ADDR | udp-load send --target ADDR [--size BYTES] \
                     [--window N] [--duration S] [--warmup S]";
/// Sequence number and send time (ns since start), little-endian.
const HEADER: usize = 16;
/// A datagram without an echo for this long is lost; its slot in the window is refilled so a run never
/// stalls.
const LOSS_AFTER: Duration = Duration::from_millis(200);
/// How often in-flight datagrams are checked for loss (also the receive timeout, so the check runs when
/// nothing comes back at all).
const SCAN_EVERY: Duration = Duration::from_millis(20);
/// Datagrams per `recvmmsg`/`sendmmsg`.
const BATCH: usize = 32;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("echo") => option(&args, "--listen").and_then(|listen| echo(&listen)),
        Some("send") => Load::from_args(&args).and_then(|load| load.run()),
        _ => Err(USAGE.to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("udp-load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The value after `name`, if given.
fn option(args: &[String], name: &str) -> Result<String, String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .ok_or_else(|| format!("{name} missing; {USAGE}"))
}

fn parsed<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T, String> {
    if !args.iter().any(|a| a == name) {
        return Ok(default);
    }
    let text = option(args, name)?;
    text.parse().map_err(|_| format!("{name} {text:?} is not valid"))
}

fn echo(listen: &str) -> Result<(), String> {
    let socket = UdpSocket::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    large_buffers(&socket);
    let mut batch = Batch::new(65_536);
    loop {
        // A failed receive or send loses datagrams; the sender counts them, the echo carries on.
        if batch.receive(&socket).is_ok() {
            let _ = batch.echo(&socket);
        }
    }
}

/// A full window of large datagrams overflows the default socket buffers (about 200 KiB): losses there
/// would be the load side's, not the relay's. Forcing a size needs root (the benchmark runs as root).
fn large_buffers(socket: &UdpSocket) {
    use nix::sys::socket::{setsockopt, sockopt};
    const BYTES: usize = 8 << 20;
    if setsockopt(socket, sockopt::RcvBufForce, &BYTES).is_err()
        || setsockopt(socket, sockopt::SndBufForce, &BYTES).is_err()
    {
        eprintln!("udp-load: cannot enlarge the socket buffers (not root?); a full window may overflow them");
    }
}

/// Receive buffers for up to [`BATCH`] datagrams.
struct Batch {
    slots: Vec<Vec<u8>>,
    /// Length and source of each received datagram.
    received: Vec<(usize, Option<SocketAddr>)>,
}

impl Batch {
    fn new(slot: usize) -> Self {
        Self {
            slots: vec![vec![0; slot]; BATCH],
            received: Vec::with_capacity(BATCH),
        }
    }

    /// Waits for a datagram (up to the socket's read timeout), then takes what else is queued.
    fn receive(&mut self, socket: &UdpSocket) -> std::io::Result<usize> {
        use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
        self.received.clear();
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
            .slots
            .iter_mut()
            .map(|slot| [IoSliceMut::new(slot)])
            .collect();
        let results = recvmmsg(
            socket.as_raw_fd(),
            &mut headers,
            slices.iter_mut(),
            MsgFlags::MSG_WAITFORONE,
            None,
        )?;
        self.received
            .extend(results.map(|message| (message.bytes, message.address.as_ref().and_then(socket_addr))));
        Ok(self.received.len())
    }

    fn datagrams(&self) -> impl Iterator<Item = &[u8]> {
        self.received
            .iter()
            .zip(&self.slots)
            .map(|(&(len, _), slot)| &slot[..len])
    }

    /// Sends every received datagram back to its source.
    fn echo(&self, socket: &UdpSocket) -> std::io::Result<()> {
        let destinations: Vec<Option<SocketAddr>> = self.received.iter().map(|&(_, from)| from).collect();
        let datagrams: Vec<&[u8]> = self.datagrams().collect();
        send_all(socket, &datagrams, &destinations)
    }
}

fn socket_addr(address: &nix::sys::socket::SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddrV4::from(*v4).into());
    }
    address.as_sockaddr_in6().map(|v6| SocketAddrV6::from(*v6).into())
}

/// `sendmmsg` until all are sent: datagram i to `destinations[i]` (`None` on a connected socket).
fn send_all(
    socket: &UdpSocket,
    datagrams: &[&[u8]],
    destinations: &[Option<SocketAddr>],
) -> std::io::Result<()> {
    use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
    let addresses: Vec<Option<SockaddrStorage>> = destinations
        .iter()
        .map(|d| d.map(SockaddrStorage::from))
        .collect();
    let slices: Vec<[IoSlice<'_>; 1]> = datagrams.iter().map(|d| [IoSlice::new(d)]).collect();
    let mut done = 0;
    while done < datagrams.len() {
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(datagrams.len() - done, None);
        let no_cmsgs: [ControlMessage<'_>; 0] = [];
        done += sendmmsg(
            socket.as_raw_fd(),
            &mut headers,
            &slices[done..],
            &addresses[done..],
            no_cmsgs,
            MsgFlags::empty(),
        )?
        .count();
    }
    Ok(())
}

#[derive(Debug)]
struct Load {
    target: SocketAddr,
    size: usize,
    window: usize,
    warmup: Duration,
    duration: Duration,
}

/// What happened inside the measured period.
#[derive(Debug, Default)]
struct Tally {
    sent: u64,
    received: u64,
    lost: u64,
    late: u64,
    errors: u64,
    rtt_ns: Vec<u64>,
    /// Warm-up included.
    all_received: u64,
}

impl Load {
    fn from_args(args: &[String]) -> Result<Self, String> {
        let target = option(args, "--target")?;
        let seconds = |name, default| {
            let s: f64 = parsed(args, name, default)?;
            Duration::try_from_secs_f64(s).map_err(|_| format!("{name} {s} is not a duration"))
        };
        let load = Self {
            target: target
                .parse()
                .map_err(|_| format!("--target {target:?} is not ADDR:PORT"))?,
            size: parsed(args, "--size", 200)?,
            window: parsed(args, "--window", 32)?,
            warmup: seconds("--warmup", 0.5)?,
            duration: seconds("--duration", 5.0)?,
        };
        if load.size < HEADER || load.window == 0 || load.duration.is_zero() {
            return Err(format!("--size must be >= {HEADER}, --window and --duration > 0"));
        }
        Ok(load)
    }

    fn run(&self) -> Result<(), String> {
        let tally = self.measure().map_err(|e| format!("{}: {e}", self.target))?;
        let mut rtt = tally.rtt_ns;
        rtt.sort_unstable();
        let percentile_us = |p: f64| {
            // Nearest rank; 0 when nothing came back.
            let rank = ((rtt.len() as f64 * p).ceil() as usize).clamp(1, rtt.len().max(1)) - 1;
            rtt.get(rank).map_or(0.0, |&ns| ns as f64 / 1000.0)
        };
        let seconds = self.duration.as_secs_f64();
        println!(
            "{{\"sent\":{},\"received\":{},\"lost\":{},\"late\":{},\"errors\":{},\"seconds\":{seconds:.3},\
             \"pps\":{:.0},\"p50_us\":{:.1},\"p99_us\":{:.1},\"all_received\":{}}}",
            tally.sent,
            tally.received,
            tally.lost,
            tally.late,
            tally.errors,
            tally.received as f64 / seconds,
            percentile_us(0.50),
            percentile_us(0.99),
            tally.all_received,
        );
        Ok(())
    }

    fn measure(&self) -> std::io::Result<Tally> {
        let local: SocketAddr = if self.target.is_ipv4() {
            "0.0.0.0:0"
        } else {
            "[::]:0"
        }
        .parse()
        .expect("a literal address");
        // Connected: one flow, and the kernel drops datagrams from anyone but the target.
        let socket = UdpSocket::bind(local)?;
        large_buffers(&socket);
        socket.connect(self.target)?;
        socket.set_read_timeout(Some(SCAN_EVERY))?;

        let epoch = Instant::now();
        let start = self.warmup;
        let end = self.warmup + self.duration;
        let mut outgoing = vec![vec![0u8; self.size]; self.window];
        let mut batch = Batch::new(65_536);
        // Sequence number -> send time, of the datagrams still awaiting their echo.
        let mut in_flight: HashMap<u64, Duration> = HashMap::with_capacity(self.window * 2);
        let mut next_seq = 0u64;
        let mut tally = Tally {
            rtt_ns: Vec::with_capacity(1 << 20),
            ..Tally::default()
        };
        let mut last_scan = Duration::ZERO;

        // Sends `count` new datagrams in one go.
        let mut send = |count: usize,
                        in_flight: &mut HashMap<u64, Duration>,
                        tally: &mut Tally|
         -> std::io::Result<()> {
            let now = epoch.elapsed();
            for datagram in &mut outgoing[..count] {
                datagram[..8].copy_from_slice(&next_seq.to_le_bytes());
                datagram[8..HEADER]
                    .copy_from_slice(&u64::try_from(now.as_nanos()).unwrap_or(0).to_le_bytes());
                in_flight.insert(next_seq, now);
                next_seq += 1;
            }
            let datagrams: Vec<&[u8]> = outgoing[..count].iter().map(Vec::as_slice).collect();
            match send_all(&socket, &datagrams, &vec![None; count]) {
                Ok(()) if now >= start => tally.sent += count as u64,
                Ok(()) => {}
                // An ICMP error from an earlier datagram surfaces here; these are not all sent, and the
                // loss scan refills their slots.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => tally.errors += 1,
                Err(e) => return Err(e),
            }
            Ok(())
        };

        send(self.window, &mut in_flight, &mut tally)?;
        loop {
            let received = batch.receive(&socket);
            let now = epoch.elapsed();
            if now >= end {
                break;
            }
            let measured = now >= start;
            match received {
                Ok(_) => {
                    let mut echoed = 0;
                    for reply in batch.datagrams().filter(|reply| reply.len() >= HEADER) {
                        let seq = u64::from_le_bytes(reply[..8].try_into().expect("8 bytes"));
                        let sent_ns = u64::from_le_bytes(reply[8..HEADER].try_into().expect("8 bytes"));
                        if in_flight.remove(&seq).is_some() {
                            echoed += 1;
                            tally.all_received += 1;
                            if measured {
                                tally.received += 1;
                                tally
                                    .rtt_ns
                                    .push(u64::try_from(now.as_nanos()).unwrap_or(0).saturating_sub(sent_ns));
                            }
                        } else if measured {
                            tally.late += 1;
                        }
                    }
                    if echoed > 0 {
                        send(echoed, &mut in_flight, &mut tally)?;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => tally.errors += 1,
                Err(e) => return Err(e),
            }
            if now - last_scan >= SCAN_EVERY {
                last_scan = now;
                let before = in_flight.len();
                in_flight.retain(|_, sent| now.saturating_sub(*sent) < LOSS_AFTER);
                let lost = before - in_flight.len();
                if measured {
                    tally.lost += lost as u64;
                }
                if lost > 0 {
                    send(lost, &mut in_flight, &mut tally)?;
                }
            }
        }
        Ok(tally)
    }
}
