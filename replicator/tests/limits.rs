//! gRPC message limits over loopback: a request larger than the one limit
//! (`tandem_core::limits::MAX_GRPC_MESSAGE_BYTES`) is refused by the replicator's server, and a
//! request just under it gets through to the handler.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;
use tandem_core::limits::MAX_GRPC_MESSAGE_BYTES;
use tandem_core::proto::replication_client::ReplicationClient;
use tandem_core::proto::ArchiveWalRequest;
use tandem_replicator::receive::{serve, ReplicationService};

#[tokio::test]
async fn a_request_over_the_message_limit_is_refused_by_the_server() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(ReplicationService::new(), listener, async {
        let _ = stop_rx.await;
    }));
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap();
    // A client that would send anything: the server must hold the line by itself.
    let mut client = ReplicationClient::new(ch)
        .max_encoding_message_size(usize::MAX)
        .max_decoding_message_size(usize::MAX);
    let request = |len: usize| ArchiveWalRequest {
        group: "g".into(),
        resource: "r".into(),
        name: "000000010000000000000001".into(),
        data: vec![0u8; len],
        timeout_ms: 1,
    };
    let over = client
        .archive_wal(request(MAX_GRPC_MESSAGE_BYTES + 1))
        .await
        .unwrap_err();
    assert_eq!(over.code(), tonic::Code::OutOfRange, "{over:?}");
    assert!(over.message().contains("too large"), "{}", over.message());
    // Under the limit the handler answers (here: no such group), not the codec.
    let under = client.archive_wal(request(1 << 20)).await.unwrap_err();
    assert_ne!(under.code(), tonic::Code::OutOfRange, "{under:?}");
    let _ = stop_tx.send(());
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
