//! UDP load generator and echo server for `tests/bench/udp.sh` (Python cannot drive a relay faster than
//! socat).
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
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
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
    let mut buffer = vec![0u8; 65_536];
    loop {
        // A failed receive or send loses one datagram; the sender counts it, the echo carries on.
        if let Ok((len, peer)) = socket.recv_from(&mut buffer) {
            let _ = socket.send_to(&buffer[..len], peer);
        }
    }
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
        socket.connect(self.target)?;
        socket.set_read_timeout(Some(SCAN_EVERY))?;

        let epoch = Instant::now();
        let start = self.warmup;
        let end = self.warmup + self.duration;
        let mut datagram = vec![0u8; self.size];
        let mut reply = vec![0u8; 65_536];
        // Sequence number -> send time, of the datagrams still awaiting their echo.
        let mut in_flight: HashMap<u64, Duration> = HashMap::with_capacity(self.window * 2);
        let mut next_seq = 0u64;
        let mut tally = Tally {
            rtt_ns: Vec::with_capacity(1 << 20),
            ..Tally::default()
        };
        let mut last_scan = Duration::ZERO;

        let mut send = |in_flight: &mut HashMap<u64, Duration>, tally: &mut Tally| -> std::io::Result<()> {
            let now = epoch.elapsed();
            datagram[..8].copy_from_slice(&next_seq.to_le_bytes());
            datagram[8..HEADER].copy_from_slice(&u64::try_from(now.as_nanos()).unwrap_or(0).to_le_bytes());
            match socket.send(&datagram) {
                Ok(_) if now >= start => tally.sent += 1,
                Ok(_) => {}
                // An ICMP error from an earlier datagram surfaces here; this one is simply not sent, and
                // the loss scan refills its slot.
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => tally.errors += 1,
                Err(e) => return Err(e),
            }
            in_flight.insert(next_seq, now);
            next_seq += 1;
            Ok(())
        };

        for _ in 0..self.window {
            send(&mut in_flight, &mut tally)?;
        }
        loop {
            let received = socket.recv(&mut reply);
            let now = epoch.elapsed();
            if now >= end {
                break;
            }
            let measured = now >= start;
            match received {
                Ok(len) if len >= HEADER => {
                    let seq = u64::from_le_bytes(reply[..8].try_into().expect("8 bytes"));
                    let sent_ns = u64::from_le_bytes(reply[8..HEADER].try_into().expect("8 bytes"));
                    if in_flight.remove(&seq).is_some() {
                        tally.all_received += 1;
                        if measured {
                            tally.received += 1;
                            tally
                                .rtt_ns
                                .push(u64::try_from(now.as_nanos()).unwrap_or(0).saturating_sub(sent_ns));
                        }
                        send(&mut in_flight, &mut tally)?;
                    } else if measured {
                        tally.late += 1;
                    }
                }
                Ok(_) => {} // not ours
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
                for _ in 0..lost {
                    send(&mut in_flight, &mut tally)?;
                }
            }
        }
        Ok(tally)
    }
}
