//! Fuzz the replicator's request handlers: arbitrary bytes decoded (prost) as each request
//! message of the `Replication` service, then the pure checks its handler runs before it
//! touches a file: frame decoding for `Ship`, block size and range for `Merkle`, the
//! per-request limits of `ReadBlocks`, copy names for `Snapshot` and `Recover`, the recovery
//! point selector, and the archive file checks of `ArchiveWal`. Nothing panics; whatever a
//! check accepts stays inside the limits.
//!
//! Input: the first byte picks the message type, the rest is the encoded message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use tandem_core::frame::{Decoder, MAX_RAW_LEN};
use tandem_core::proto::ship_request::Msg;
use tandem_core::proto::{
    ArchiveWalRequest, CheckpointRequest, CheckpointsRequest, MerkleRequest, ReadBlocksRequest,
    RecoverRequest, ResyncRequest, ShipRequest, SnapshotRequest,
};
use tandem_replicator::merkle::check_block_size;
use tandem_replicator::resync::{MAX_BLOCKS_PER_REQUEST, MAX_REPLY_BYTES};
use tandem_replicator::validate::{check_copy_name, check_read_blocks, recover_selector};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    match kind % 9 {
        0 => {
            if let Ok(ShipRequest {
                msg: Some(Msg::Frame(f)),
            }) = ShipRequest::decode(body)
            {
                if let Ok(mut dec) = Decoder::new() {
                    if let Ok(frame) = dec.decode(&f) {
                        assert!(frame.header.raw_len <= MAX_RAW_LEN);
                    }
                }
            }
        }
        1 => {
            if let Ok(r) = MerkleRequest::decode(body) {
                let _ = check_block_size(r.block_size);
            }
        }
        2 => {
            if let Ok(r) = ReadBlocksRequest::decode(body) {
                if check_read_blocks(&r, MAX_BLOCKS_PER_REQUEST).is_ok() {
                    assert!(r.blocks.len() <= MAX_BLOCKS_PER_REQUEST);
                    assert!(r.blocks.len() as u64 * u64::from(r.block_size) <= MAX_REPLY_BYTES);
                }
            }
        }
        3 => {
            if let Ok(r) = SnapshotRequest::decode(body) {
                if check_copy_name(&r.group, &r.name).is_ok() {
                    assert!(!r.name.contains('/') && !r.name.starts_with('.'));
                }
            }
        }
        4 => {
            if let Ok(r) = RecoverRequest::decode(body) {
                let _ = recover_selector(&r);
                if !r.name.is_empty() {
                    let _ = check_copy_name(&r.group, &r.name);
                }
                if r.block_size != 0 {
                    let _ = check_block_size(r.block_size);
                }
            }
        }
        5 => {
            if let Ok(r) = ArchiveWalRequest::decode(body) {
                let _ = tandem_core::walfile::changes(&r.resource, &r.name, &r.data, 1);
            }
        }
        6 => {
            let _ = CheckpointRequest::decode(body);
        }
        7 => {
            let _ = CheckpointsRequest::decode(body);
        }
        _ => {
            let _ = ResyncRequest::decode(body);
        }
    }
});
