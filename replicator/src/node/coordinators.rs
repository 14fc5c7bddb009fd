//! Talking to the coordinators: dialing them, and asking their consent before a sync group
//! acknowledges writes without its replica. Network I/O only.

use std::time::Duration;
use tandem_core::ids::Epoch;
use tandem_core::net::Net;
use tandem_core::proto::coordinator_client::CoordinatorClient;
use tandem_core::proto::SyncDegradedRequest;
use tonic::transport::Channel;

/// Asks the coordinators (the SyncDegraded call; they take the node from this node's
/// certificate and the site from the topology) before a sync group of this node
/// acknowledges writes without its replica.
#[derive(Debug)]
pub(super) struct CoordinatorConsent {
    pub(super) group: String,
    pub(super) node: String,
    pub(super) coordinators: Vec<String>,
    pub(super) net: Net,
}

impl crate::pipeline::SyncConsent for CoordinatorConsent {
    fn ask(&self, epoch: Epoch, degraded: bool) -> crate::pipeline::ConsentFuture {
        let req = SyncDegradedRequest {
            group: self.group.clone(),
            epoch: epoch.0,
            on: degraded,
            node: self.node.clone(),
        };
        let (coordinators, net) = (self.coordinators.clone(), self.net.clone());
        Box::pin(async move {
            let mut why = Vec::new();
            for addr in &coordinators {
                let Some(mut c) = connect(&net, addr).await else {
                    why.push(format!("{addr}: unreachable"));
                    continue;
                };
                match c.sync_degraded(req.clone()).await {
                    Ok(_) => return Ok(()),
                    // The leader refused it: asking another coordinator reaches the same one.
                    Err(e) if e.code() == tonic::Code::FailedPrecondition => {
                        return Err(format!("refused: {}", e.message()))
                    }
                    Err(e) => why.push(format!("{addr}: {}", e.message())),
                }
            }
            Err(why.join("; "))
        })
    }
}

/// A coordinator client whose calls time out after 2 s.
pub(super) async fn connect(net: &Net, addr: &str) -> Option<CoordinatorClient<Channel>> {
    connect_within(net, addr, Duration::from_secs(2)).await
}

/// A coordinator client whose calls time out after `timeout` (connecting: at most 300 ms).
pub(super) async fn connect_within(
    net: &Net,
    addr: &str,
    timeout: Duration,
) -> Option<CoordinatorClient<Channel>> {
    let ep = net
        .endpoint(addr)
        .ok()?
        .connect_timeout(timeout.min(Duration::from_millis(300)))
        .timeout(timeout);
    match net.connect(ep).await {
        Ok(ch) => Some(tandem_core::grpc_limits!(CoordinatorClient::new(ch))),
        Err(e) => {
            tracing::debug!("coordinator {addr}: {e}");
            None
        }
    }
}
