//! Batched datagram I/O for the userspace UDP relay. Per-datagram system
//! calls, not copying, bound a relay: `recvmmsg` takes up to [`BATCH`]
//! datagrams in one call, and a run of equal-sized datagrams to one address
//! leaves as one UDP GSO `sendmsg`, which the kernel takes through its stack
//! once and segments at the end (Linux ≥ 4.18).
//!
//! nix wraps these calls safely; tokio's `UdpSocket` offers neither.
//! quinn-udp does, but it also switches path-MTU discovery to "probe" (no
//! local fragmentation), which a relay must not impose on its clients.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::sys::socket::{ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::Traffic;

/// Datagrams per `recvmmsg` and at most per GSO send.
const BATCH: usize = 32;
/// Each receive slot holds any UDP payload, so nothing is ever truncated.
const SLOT: usize = 65_536;
/// A GSO run stays below the 64 KiB IP packet limit, headers included.
const MAX_RUN_BYTES: usize = 65_000;
/// Larger datagrams are sent one by one: a GSO segment above the path MTU
/// fails the whole send, while a single datagram is fragmented as usual.
const MAX_SEGMENT: usize = 1472;
/// Idle batches kept for reuse; more are freed.
const POOL_KEEP: usize = 8;

/// Set once a GSO send fails with EIO: the device cannot segment, so runs
/// go out one datagram at a time from then on.
static GSO_UNSUPPORTED: AtomicBool = AtomicBool::new(false);

/// Batch buffers shared by all relay tasks. A task holds one only while it
/// has datagrams in hand, so memory follows the busy tasks, not the flows.
#[derive(Debug, Default)]
pub(super) struct BatchPool {
    idle: Mutex<Vec<Batch>>,
}

impl BatchPool {
    pub(super) fn take(self: &Arc<Self>) -> PooledBatch {
        let batch = self.lock().pop().unwrap_or_else(Batch::new);
        PooledBatch {
            batch: Some(batch),
            pool: Arc::clone(self),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Batch>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A batch on loan from the pool; it goes back when dropped.
pub(super) struct PooledBatch {
    batch: Option<Batch>,
    pool: Arc<BatchPool>,
}

impl std::ops::Deref for PooledBatch {
    type Target = Batch;
    fn deref(&self) -> &Batch {
        self.batch.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for PooledBatch {
    fn deref_mut(&mut self) -> &mut Batch {
        self.batch.as_mut().expect("present until dropped")
    }
}

impl Drop for PooledBatch {
    fn drop(&mut self) {
        if let Some(mut batch) = self.batch.take() {
            // A task cancelled mid-batch leaves a run unsent: it must not
            // reach the next borrower's socket.
            batch.outbox.run = None;
            batch.outbox.data.clear();
            let mut idle = self.pool.lock();
            if idle.len() < POOL_KEEP {
                idle.push(batch);
            }
        }
    }
}

/// Received datagrams and the run being gathered for sending.
pub(super) struct Batch {
    pub(super) inbox: Inbox,
    pub(super) outbox: Outbox,
}

impl Batch {
    fn new() -> Self {
        Self {
            inbox: Inbox {
                // Zeroed and never written beyond what arrives: the pages a
                // slot does not use stay unbacked.
                slots: vec![0; BATCH * SLOT],
                received: Vec::with_capacity(BATCH),
            },
            outbox: Outbox {
                run: None,
                data: Vec::with_capacity(MAX_RUN_BYTES),
            },
        }
    }
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("received", &self.inbox.received.len())
            .finish_non_exhaustive()
    }
}

pub(super) struct Inbox {
    slots: Vec<u8>,
    /// Length and source of each datagram in `slots`.
    received: Vec<(usize, SocketAddr)>,
}

impl Inbox {
    /// Takes what `socket` has queued, up to [`BATCH`] datagrams, without
    /// waiting; `WouldBlock` when nothing is (readiness is then cleared).
    pub(super) fn receive(&mut self, socket: &UdpSocket) -> io::Result<usize> {
        let Self { slots, received } = self;
        received.clear();
        socket.try_io(Interest::READABLE, || {
            // Made per call: nix's headers hold raw pointers, which are not
            // `Send`, and a batch travels between tasks and threads.
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
            let mut slices: Vec<[IoSliceMut<'_>; 1]> = slots
                .chunks_mut(SLOT)
                .map(|slot| [IoSliceMut::new(slot)])
                .collect();
            let results = nix::sys::socket::recvmmsg(
                socket.as_raw_fd(),
                &mut headers,
                slices.iter_mut(),
                MsgFlags::empty(),
                None,
            )?;
            received
                .extend(results.filter_map(|message| Some((message.bytes, socket_addr(&message.address?)?))));
            Ok(())
        })?;
        Ok(received.len())
    }

    /// The received datagrams with their sources, in arrival order.
    pub(super) fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.received
            .iter()
            .zip(self.slots.chunks(SLOT))
            .map(|(&(len, source), slot)| (source, &slot[..len]))
    }
}

fn socket_addr(address: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = address.as_sockaddr_in() {
        return Some(SocketAddrV4::from(*v4).into());
    }
    address.as_sockaddr_in6().map(|v6| SocketAddrV6::from(*v6).into())
}

/// Gathers consecutive datagrams for one socket and destination into a run
/// for one GSO send: all of one size, except that a shorter one may end it.
pub(super) struct Outbox {
    run: Option<Run>,
    data: Vec<u8>,
}

#[derive(Clone)]
struct Run {
    socket: Arc<UdpSocket>,
    destination: SocketAddr,
    segment: usize,
    count: usize,
    /// A shorter datagram ended the run.
    closed: bool,
}

impl Run {
    fn takes(&self, socket: &Arc<UdpSocket>, destination: SocketAddr, len: usize, run_bytes: usize) -> bool {
        !self.closed
            && self.count < BATCH
            && len <= self.segment
            && run_bytes + len <= MAX_RUN_BYTES
            && self.destination == destination
            && Arc::ptr_eq(&self.socket, socket)
    }
}

impl Outbox {
    /// Queues `datagram` for `destination` on `socket`, sending the run
    /// gathered so far first if this one cannot join it.
    pub(super) async fn push(
        &mut self,
        socket: &Arc<UdpSocket>,
        destination: SocketAddr,
        datagram: &[u8],
        sent: &Traffic,
    ) {
        let joins = self
            .run
            .as_ref()
            .is_some_and(|run| run.takes(socket, destination, datagram.len(), self.data.len()));
        if joins {
            let run = self.run.as_mut().expect("checked above");
            run.count += 1;
            run.closed = datagram.len() < run.segment;
        } else {
            self.flush(sent).await;
            let gso = datagram.len() <= MAX_SEGMENT && !GSO_UNSUPPORTED.load(Ordering::Relaxed);
            self.run = Some(Run {
                socket: Arc::clone(socket),
                destination,
                segment: datagram.len(),
                count: 1,
                // Too large to segment: the run is this datagram alone.
                closed: !gso,
            });
        }
        self.data.extend_from_slice(datagram);
    }

    /// Sends the gathered run, waiting while the socket's buffer is full.
    /// A send error drops the run (UDP semantics) after logging it.
    pub(super) async fn flush(&mut self, sent: &Traffic) {
        let Some(run) = self.run.take() else {
            return;
        };
        let result = if run.count > 1 {
            match send(&run.socket, run.destination, &self.data, Some(run.segment)).await {
                Ok(()) => {
                    sent.add_run(run.count, self.data.len());
                    Ok(())
                }
                // EIO: the device cannot segment; EINVAL: e.g. a segment
                // above this route's MTU. Either way the datagrams can still
                // go singly.
                Err(e)
                    if e.raw_os_error() == Some(Errno::EIO as i32)
                        || e.raw_os_error() == Some(Errno::EINVAL as i32) =>
                {
                    if e.raw_os_error() == Some(Errno::EIO as i32)
                        && !GSO_UNSUPPORTED.swap(true, Ordering::Relaxed)
                    {
                        tracing::info!(
                            "UDP segmentation offload failed ({e}); relaying datagram by datagram"
                        );
                    }
                    self.send_one_by_one(&run, sent).await
                }
                Err(e) => Err(e),
            }
        } else {
            send(&run.socket, run.destination, &self.data, None)
                .await
                .map(|()| sent.add(self.data.len()))
        };
        if let Err(e) = result {
            tracing::debug!(destination = %run.destination, "send: {e}");
        }
        self.data.clear();
    }

    async fn send_one_by_one(&self, run: &Run, sent: &Traffic) -> io::Result<()> {
        for datagram in self.data.chunks(run.segment) {
            send(&run.socket, run.destination, datagram, None).await?;
            sent.add(datagram.len());
        }
        Ok(())
    }
}

/// One `sendmsg`: `segment` set makes it a GSO run of that segment size.
async fn send(
    socket: &UdpSocket,
    destination: SocketAddr,
    data: &[u8],
    segment: Option<usize>,
) -> io::Result<()> {
    let destination = SockaddrStorage::from(destination);
    let segment = segment.map(|size| u16::try_from(size).expect("segments are at most MAX_SEGMENT"));
    socket
        .async_io(Interest::WRITABLE, || {
            let cmsgs: &[ControlMessage<'_>] = match &segment {
                Some(size) => &[ControlMessage::UdpGsoSegments(size)],
                None => &[],
            };
            nix::sys::socket::sendmsg(
                socket.as_raw_fd(),
                &[IoSlice::new(data)],
                cmsgs,
                MsgFlags::empty(),
                Some(&destination),
            )?;
            Ok(())
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn loopback() -> Arc<UdpSocket> {
        Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"))
    }

    /// Datagram `i` of `len` bytes, all bytes `i`, so order and boundaries show.
    fn datagram(i: usize, len: usize) -> Vec<u8> {
        vec![u8::try_from(i).expect("small"); len]
    }

    #[tokio::test]
    async fn runs_arrive_as_the_datagrams_they_were_gathered_from() {
        let (sender, receiver, other) = (loopback().await, loopback().await, loopback().await);
        let to = receiver.local_addr().expect("address");
        let to_other = other.local_addr().expect("address");
        // Equal sizes ending in a shorter one (one GSO run), more than BATCH of them (two runs),
        // one too large to segment, then a change of destination.
        let mut expected: Vec<Vec<u8>> = (0..BATCH + 5).map(|i| datagram(i, 1000)).collect();
        expected.push(datagram(BATCH + 5, 300));
        expected.push(datagram(BATCH + 6, 1000));
        expected.push(datagram(BATCH + 7, 9000));
        expected.push(datagram(BATCH + 8, 1000));

        let pool = Arc::new(BatchPool::default());
        let sent = Traffic::default();
        let mut batch = pool.take();
        for d in &expected {
            batch.outbox.push(&sender, to, d, &sent).await;
        }
        batch.outbox.push(&sender, to_other, b"elsewhere", &sent).await;
        batch.outbox.flush(&sent).await;

        let count = sent.get();
        assert_eq!(count.packets, expected.len() as u64 + 1);
        assert_eq!(
            count.bytes,
            expected.iter().map(Vec::len).sum::<usize>() as u64 + 9
        );
        let mut got = Vec::new();
        while got.len() < expected.len() {
            receiver.readable().await.expect("readable");
            match batch.inbox.receive(&receiver) {
                Ok(_) => got.extend(batch.inbox.datagrams().map(|(from, d)| {
                    assert_eq!(from, sender.local_addr().expect("address"));
                    d.to_vec()
                })),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("receive: {e}"),
            }
        }
        assert_eq!(got, expected);
        let mut buffer = [0; 64];
        let (len, _) = other.recv_from(&mut buffer).await.expect("receive");
        assert_eq!(&buffer[..len], b"elsewhere");
    }

    #[tokio::test]
    async fn a_run_takes_only_what_one_gso_send_can_carry() {
        let (socket, other_socket) = (loopback().await, loopback().await);
        let to: SocketAddr = "127.0.0.1:9".parse().expect("address");
        let run = Run {
            socket: Arc::clone(&socket),
            destination: to,
            segment: 1200,
            count: 1,
            closed: false,
        };
        assert!(run.takes(&socket, to, 1200, 1200));
        assert!(run.takes(&socket, to, 100, 1200), "a shorter one may end the run");
        assert!(!run.takes(&socket, to, 1201, 1200), "longer than the segment");
        assert!(!run.takes(&socket, "127.0.0.1:10".parse().expect("address"), 1200, 1200));
        assert!(!run.takes(&other_socket, to, 1200, 1200));
        assert!(
            !run.takes(&socket, to, 1200, MAX_RUN_BYTES - 1199),
            "past the 64 KiB limit"
        );
        assert!(
            !Run {
                count: BATCH,
                ..run.clone()
            }
            .takes(&socket, to, 1200, 1200)
        );
        assert!(!Run { closed: true, ..run }.takes(&socket, to, 1200, 1200));
    }

    #[tokio::test]
    async fn an_unsent_run_does_not_outlive_its_borrower() {
        let (sender, receiver) = (loopback().await, loopback().await);
        let to = receiver.local_addr().expect("address");
        let pool = Arc::new(BatchPool::default());
        let sent = Traffic::default();
        let mut cancelled = pool.take();
        cancelled.outbox.push(&sender, to, b"stale", &sent).await;
        drop(cancelled);
        let mut batch = pool.take();
        batch.outbox.push(&sender, to, b"fresh", &sent).await;
        batch.outbox.flush(&sent).await;
        let mut buffer = [0; 64];
        let (len, _) = receiver.recv_from(&mut buffer).await.expect("receive");
        assert_eq!(&buffer[..len], b"fresh");
        assert_eq!(sent.get().packets, 1);
    }
}
