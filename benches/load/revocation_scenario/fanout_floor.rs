//! The floor under WatchRevocations' fan-out: what the cheapest tonic
//! server this bench can write pays, in CPU, to push one message to each of
//! N server-streaming calls. Each call's response is a channel read by
//! tonic; a publisher puts a clone of one prebuilt message into every
//! channel (no task per call, no database, no authentication). The server
//! runs on a runtime and threads of its own (two workers, as authd on this
//! machine), whose CPU time is read from /proc per thread, so the clients
//! in this process are not counted. authd's CPU per subscriber per event
//! (`logouts`) is then read against this floor.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::Stream;
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use crate::client::connect;
use crate::procfs::TICK_US;

/// The server's threads, found by name in /proc/self/task.
const SERVER_THREADS: &str = "floor-server";

type Subscribers = Arc<Mutex<Vec<mpsc::Sender<Result<HealthCheckResponse, Status>>>>>;

struct Fanout {
    subscribers: Subscribers,
}

#[tonic::async_trait]
impl Health for Fanout {
    async fn check(&self, _: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
        Err(Status::unimplemented("only Watch"))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

    async fn watch(&self, _: Request<HealthCheckRequest>) -> Result<Response<Self::WatchStream>, Status> {
        // The same depth as authd's subscriber channels.
        let (tx, rx) = mpsc::channel(16);
        if let Ok(mut subscribers) = self.subscribers.lock() {
            subscribers.push(tx);
        }
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// What one measurement found.
pub struct Floor {
    pub subscribers: usize,
    pub events: usize,
    /// Server CPU per event, all subscribers together.
    pub us_per_event: f64,
    pub us_per_subscriber_event: f64,
}

/// CPU ticks (user + system) of this process's threads named `name`.
fn thread_ticks(name: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim().starts_with(name))
        })
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// Opens `subscribers` Watch calls (100 per connection, as the authd
/// measurement does) and publishes `events` messages, each once every
/// stream has the one before.
pub async fn measure(subscribers: usize, events: usize) -> Floor {
    let list: Subscribers = Arc::new(Mutex::new(Vec::new()));
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (publish, mut to_publish) = mpsc::unbounded_channel::<HealthCheckResponse>();
    let server_list = list.clone();
    let server = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name(SERVER_THREADS)
            .enable_all()
            .build()
            .expect("the floor server's runtime");
        runtime.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
            let _ = addr_tx.send(format!("http://{}", listener.local_addr().expect("its address")));
            let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
            let publisher_list = server_list.clone();
            // The publisher runs on the server's runtime: its work is the
            // server's.
            tokio::spawn(async move {
                while let Some(message) = to_publish.recv().await {
                    let senders = publisher_list.lock().map(|l| l.clone()).unwrap_or_default();
                    for sender in senders {
                        let _ = sender.try_send(Ok(message));
                    }
                }
            });
            let _ = Server::builder()
                .add_service(HealthServer::new(Fanout {
                    subscribers: server_list,
                }))
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stopped.await;
                })
                .await;
        });
    });
    let addr = addr_rx.await.expect("the floor server's address");
    let channels = connect(&addr, subscribers.div_ceil(100).max(1)).await;
    let (received_tx, mut received) = mpsc::unbounded_channel::<()>();
    let mut readers = Vec::with_capacity(subscribers);
    for i in 0..subscribers {
        let mut client = HealthClient::new(channels[i % channels.len()].clone());
        let mut stream = client
            .watch(HealthCheckRequest::default())
            .await
            .expect("a Watch call")
            .into_inner();
        let received_tx = received_tx.clone();
        readers.push(tokio::spawn(async move {
            while let Ok(Some(_)) = stream.message().await {
                if received_tx.send(()).is_err() {
                    return;
                }
            }
        }));
    }
    while list.lock().map(|l| l.len()).unwrap_or(0) < subscribers {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = thread_ticks(SERVER_THREADS);
    let started = Instant::now();
    for i in 0..events {
        let status = if i % 2 == 0 {
            ServingStatus::NotServing
        } else {
            ServingStatus::Serving
        };
        let _ = publish.send(HealthCheckResponse {
            status: status.into(),
        });
        for _ in 0..subscribers {
            let _ = tokio::time::timeout(Duration::from_secs(10), received.recv()).await;
        }
    }
    let _elapsed = started.elapsed();
    let ticks = thread_ticks(SERVER_THREADS) - before;
    drop(stop);
    for reader in readers {
        reader.abort();
    }
    let _ = tokio::task::spawn_blocking(move || server.join()).await;
    let us_per_event = ticks as f64 * TICK_US / events.max(1) as f64;
    Floor {
        subscribers,
        events,
        us_per_event,
        us_per_subscriber_event: us_per_event / subscribers.max(1) as f64,
    }
}
