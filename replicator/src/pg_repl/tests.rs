//! Unit tests of the pure parts: the codec (round trips, golden bytes, truncation, oversize
//! lengths), [`Lsn`] text, and the reading of each command's result set.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::codec::*;
use super::*;

fn field(name: &str) -> Field {
    Field {
        name: name.into(),
        table_oid: 0,
        column: 0,
        type_oid: 25,
        type_size: -1,
        type_modifier: -1,
        format: 0,
    }
}

fn samples() -> Vec<BackendMessage> {
    vec![
        BackendMessage::Authentication(Authentication::Ok),
        BackendMessage::Authentication(Authentication::CleartextPassword),
        BackendMessage::Authentication(Authentication::Md5Password([1, 2, 3, 4])),
        BackendMessage::Authentication(Authentication::Sasl(vec![
            "SCRAM-SHA-256-PLUS".into(),
            "SCRAM-SHA-256".into(),
        ])),
        BackendMessage::Authentication(Authentication::SaslContinue(
            b"r=abc,s=xyz,i=4096".to_vec(),
        )),
        BackendMessage::Authentication(Authentication::SaslFinal(b"v=sig".to_vec())),
        BackendMessage::Authentication(Authentication::Other(7, vec![])),
        BackendMessage::ParameterStatus {
            name: "server_version".into(),
            value: "15.8".into(),
        },
        BackendMessage::BackendKeyData { pid: 42, key: -7 },
        BackendMessage::ReadyForQuery(b'I'),
        BackendMessage::RowDescription(vec![field("systemid"), field("timeline")]),
        BackendMessage::DataRow(vec![Some(b"123".to_vec()), None, Some(vec![])]),
        BackendMessage::CommandComplete("IDENTIFY_SYSTEM".into()),
        BackendMessage::EmptyQueryResponse,
        BackendMessage::ErrorResponse(ErrorFields(vec![
            (b'S', "ERROR".into()),
            (b'C', "42704".into()),
            (b'M', "replication slot \"x\" does not exist".into()),
        ])),
        BackendMessage::NoticeResponse(ErrorFields(vec![(b'M', "hello".into())])),
        BackendMessage::CopyBothResponse {
            format: 0,
            columns: vec![],
        },
        BackendMessage::CopyData(vec![b'k'; 18]),
        BackendMessage::CopyDone,
        BackendMessage::Other {
            tag: b'v',
            body: vec![0, 0, 0, 1],
        },
    ]
}

#[test]
fn every_backend_message_round_trips_through_its_bytes() {
    for (i, m) in samples().into_iter().enumerate() {
        let bytes = m.encode();
        let (back, used) = decode(&bytes).unwrap().unwrap();
        assert_eq!(back, m, "#{i}: expect {m:?} got {back:?}");
        assert_eq!(used, bytes.len(), "#{i}: consumed");
    }
}

#[test]
fn every_truncation_of_a_message_asks_for_more_bytes() {
    for m in samples() {
        let bytes = m.encode();
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]).unwrap(), None, "{m:?} cut at {cut}");
        }
    }
}

#[test]
fn two_messages_in_one_buffer_are_decoded_one_at_a_time() {
    let mut buf = BackendMessage::ReadyForQuery(b'I').encode();
    buf.extend(BackendMessage::CopyDone.encode());
    let (a, n) = decode(&buf).unwrap().unwrap();
    assert_eq!(a, BackendMessage::ReadyForQuery(b'I'));
    let (b, m) = decode(&buf[n..]).unwrap().unwrap();
    assert_eq!(b, BackendMessage::CopyDone);
    assert_eq!(n + m, buf.len());
}

#[test]
fn the_fuzz_seeds_decode_whole_and_round_trip() {
    let seeds: [(&str, &[u8], usize); 4] = [
        (
            "connect",
            include_bytes!("../../../fuzz/seeds/pg_repl_message/connect"),
            4,
        ),
        (
            "sasl",
            include_bytes!("../../../fuzz/seeds/pg_repl_message/sasl"),
            3,
        ),
        (
            "identify_system",
            include_bytes!("../../../fuzz/seeds/pg_repl_message/identify_system"),
            4,
        ),
        (
            "stream",
            include_bytes!("../../../fuzz/seeds/pg_repl_message/stream"),
            9,
        ),
    ];
    for (name, bytes, count) in seeds {
        let mut rest = bytes;
        let mut n = 0;
        while let Some((msg, used)) = decode(rest).unwrap() {
            assert_eq!(msg.encode(), &rest[..used], "{name} message {n}");
            if let BackendMessage::CopyData(p) = msg {
                let r = ReplicationMessage::decode(p.clone()).unwrap();
                assert_eq!(r.encode(), p, "{name} message {n}");
            }
            rest = &rest[used..];
            n += 1;
        }
        assert!(rest.is_empty(), "{name}: {} bytes left", rest.len());
        assert_eq!(n, count, "{name}");
    }
}

#[test]
fn golden_bytes_of_an_error_response_and_a_status_update() {
    let err = BackendMessage::ErrorResponse(ErrorFields(vec![(b'C', "42710".into())]));
    assert_eq!(err.encode(), b"E\x00\x00\x00\x0cC42710\x00\x00");
    let su = standby_status_update(Lsn(1), Lsn(2), Lsn(3), 4, true);
    let mut want = vec![b'd', 0, 0, 0, 38, b'r'];
    for v in [1u64, 2, 3, 4] {
        want.extend_from_slice(&v.to_be_bytes());
    }
    want.push(1);
    assert_eq!(su, want);
    assert_eq!(
        query("IDENTIFY_SYSTEM"),
        b"Q\x00\x00\x00\x14IDENTIFY_SYSTEM\x00"
    );
    assert_eq!(copy_done(), b"c\x00\x00\x00\x04");
    assert_eq!(terminate(), b"X\x00\x00\x00\x04");
}

#[test]
fn startup_and_password_messages_have_the_protocol_shape() {
    let s = startup_message(&[("user", "u"), ("replication", "true")]);
    assert_eq!(&s[..4], &(s.len() as i32).to_be_bytes());
    assert_eq!(&s[4..8], &196_608i32.to_be_bytes());
    assert_eq!(&s[8..], b"user\0u\0replication\0true\0\0");
    assert_eq!(password_message("pw"), b"p\x00\x00\x00\x07pw\x00");
    let init = sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=x");
    assert_eq!(&init[5..19], b"SCRAM-SHA-256\0");
    assert_eq!(&init[19..23], &9i32.to_be_bytes());
    assert_eq!(&init[23..], b"n,,n=,r=x");
    assert_eq!(sasl_response(b"c=biws"), b"p\x00\x00\x00\x0ac=biws");
}

#[test]
fn lengths_below_four_or_above_the_limit_are_refused_at_the_header() {
    for (i, len) in [i32::MIN, -1, 0, 3, (MAX_MESSAGE_LEN + 1) as i32, i32::MAX]
        .into_iter()
        .enumerate()
    {
        let mut buf = vec![b'd'];
        buf.extend_from_slice(&len.to_be_bytes());
        let e = decode(&buf).unwrap_err();
        assert_eq!(
            e,
            CodecError::BadLength {
                tag: 'd',
                len: i64::from(len),
                max: MAX_MESSAGE_LEN
            },
            "#{i}"
        );
        assert!(e.to_string().contains("'d'"), "#{i}: {e}");
        assert_eq!(needed(&buf), None, "#{i}");
    }
    let mut ok = vec![b'd'];
    ok.extend_from_slice(&(MAX_MESSAGE_LEN as i32).to_be_bytes());
    assert_eq!(decode(&ok).unwrap(), None);
    assert_eq!(needed(&ok), Some(MAX_MESSAGE_LEN + 1));
}

#[test]
fn malformed_bodies_are_refused_with_the_tag_and_offset() {
    let cases: &[(u8, &[u8], &str)] = &[
        (b'Z', b"", "ends inside"),
        (b'Z', b"II", "left over"),
        (b'S', b"name\0value", "terminating NUL"),
        (b'S', b"\xff\0v\0", "not UTF-8"),
        (b'D', b"\xff\xff", "negative count"),
        (b'D', b"\x00\x01\xff\xff\xff\xfe", "below -1"),
        (b'D', b"\x00\x01\x00\x00\x00\x05ab", "ends inside"),
        (b'T', b"\x00\x01name\0\x00", "ends inside"),
        (b'E', b"Cabc\0", "ends inside"),
        (b'R', b"\x00\x00\x00\x05ab", "ends inside"),
        (b'R', b"\x00\x00\x00\x0aSCRAM", "terminating NUL"),
        (b'R', b"\x00\x00\x00\x00x", "left over"),
        (b'c', b"x", "left over"),
        (b'W', b"\x00\x00\x02\x00", "ends inside"),
    ];
    for (i, (tag, body, want)) in cases.iter().enumerate() {
        let e = BackendMessage::decode(*tag, body).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains(want) && text.contains(&format!("'{}'", char::from(*tag))),
            "#{i}: expect {want:?} got {text:?}"
        );
    }
}

#[test]
fn xlog_data_and_keepalive_are_parsed_and_round_trip() {
    let w = ReplicationMessage::XLogData {
        start: Lsn(0x1_0000_0028),
        wal_end: Lsn(0x1_0000_1000),
        send_time: 123_456_789,
        data: b"walbytes".to_vec(),
    };
    let bytes = w.encode();
    assert_eq!(bytes.len(), XLOG_DATA_HEADER_LEN + 8);
    assert_eq!(bytes[0], b'w');
    assert_eq!(ReplicationMessage::decode(bytes).unwrap(), w);
    let k = ReplicationMessage::Keepalive {
        wal_end: Lsn(7),
        send_time: -5,
        reply_requested: true,
    };
    let bytes = k.encode();
    assert_eq!(bytes.len(), 18);
    assert_eq!(ReplicationMessage::decode(bytes).unwrap(), k);
    let empty = ReplicationMessage::XLogData {
        start: Lsn(1),
        wal_end: Lsn(1),
        send_time: 0,
        data: vec![],
    };
    assert_eq!(ReplicationMessage::decode(empty.encode()).unwrap(), empty);
}

#[test]
fn short_long_or_unknown_replication_messages_are_refused() {
    let k = ReplicationMessage::Keepalive {
        wal_end: Lsn(7),
        send_time: 1,
        reply_requested: false,
    }
    .encode();
    let w = ReplicationMessage::XLogData {
        start: Lsn(1),
        wal_end: Lsn(1),
        send_time: 0,
        data: vec![],
    }
    .encode();
    for cut in 0..k.len() {
        assert!(
            ReplicationMessage::decode(k[..cut].to_vec()).is_err(),
            "k cut {cut}"
        );
    }
    for cut in 0..w.len() {
        assert!(
            ReplicationMessage::decode(w[..cut].to_vec()).is_err(),
            "w cut {cut}"
        );
    }
    let mut long = k.clone();
    long.push(0);
    assert!(ReplicationMessage::decode(long).is_err());
    let mut bad_flag = k;
    bad_flag[17] = 2;
    assert!(ReplicationMessage::decode(bad_flag).is_err());
    let e = ReplicationMessage::decode(b"r\0\0".to_vec()).unwrap_err();
    assert!(e.to_string().contains("unknown replication message"), "{e}");
}

#[test]
fn clocks_convert_between_postgres_and_unix_epochs() {
    assert_eq!(pg_micros_to_unix_ms(0), 946_684_800_000);
    assert_eq!(pg_micros_to_unix_ms(1_999), 946_684_800_001);
    assert_eq!(pg_micros_to_unix_ms(-1), 946_684_799_999);
    assert_eq!(unix_micros_to_pg_micros(946_684_800_000_000), 0);
    assert_eq!(
        pg_micros_to_unix_ms(unix_micros_to_pg_micros(1_765_000_000_123_000)),
        1_765_000_000_123
    );
    // Extreme values from a hostile server do not overflow.
    let _ = pg_micros_to_unix_ms(i64::MAX);
    let _ = pg_micros_to_unix_ms(i64::MIN);
    let _ = unix_micros_to_pg_micros(i64::MIN);
}

#[test]
fn lsn_prints_and_parses_as_postgres_does() {
    let cases = [
        (0u64, "0/0"),
        (0x1_6B37_4D48, "1/6B374D48"),
        (0x0000_0000_0300_0028, "0/3000028"),
        (u64::MAX, "FFFFFFFF/FFFFFFFF"),
    ];
    for (i, (v, s)) in cases.iter().enumerate() {
        assert_eq!(Lsn(*v).to_string(), *s, "#{i}");
        assert_eq!(s.parse::<Lsn>().unwrap(), Lsn(*v), "#{i}");
    }
    assert_eq!("0/3000028".parse::<Lsn>(), "0/03000028".parse::<Lsn>());
    assert_eq!("a/b".parse::<Lsn>().unwrap(), Lsn(0xa_0000_000b));
    assert!(Lsn(1) < Lsn(0x1_0000_0000));
    for bad in [
        "",
        "/",
        "0/",
        "/0",
        "0",
        "0/0/0",
        "x/0",
        "0/-1",
        "+1/0",
        "123456789/0",
        "0/ 1",
        "0x1/0",
    ] {
        let e = bad.parse::<Lsn>().unwrap_err();
        assert!(e.to_string().contains("not a WAL position"), "{bad:?}: {e}");
    }
}

#[test]
fn segment_names_invert_the_segment_start_of_pg_feed() {
    let cases = [
        (
            1u32,
            0x0300_0028u64,
            16u64 << 20,
            "000000010000000000000003",
        ),
        (2, 0x1_0000_0000, 16 << 20, "000000020000000100000000"),
        (1, 0x1_FF00_0000, 16 << 20, "0000000100000001000000FF"),
        (
            3,
            0x5_0000_0000 + 3 * (1 << 20) + 7,
            1 << 20,
            "000000030000000500000003",
        ),
        (1, 0x4000_0000, 1 << 30, "000000010000000000000001"),
    ];
    for (i, (tli, lsn, seg, name)) in cases.iter().enumerate() {
        let got = segment_name(*tli, Lsn(*lsn), *seg).unwrap();
        assert_eq!(got, *name, "#{i}");
        assert_eq!(
            crate::pg_feed::segment_start(&got, *seg),
            Some(lsn - lsn % seg),
            "#{i}"
        );
    }
    for bad in [0, 1000, 1 << 19, 3 << 20, 1 << 31] {
        assert_eq!(segment_name(1, Lsn(0), bad), None, "{bad}");
    }
}

#[test]
fn only_data_events_have_a_data_end() {
    let d = WalEvent::Data {
        start: Lsn(100),
        wal_end: Lsn(500),
        send_time_ms: 0,
        bytes: vec![0; 28],
    };
    assert_eq!(d.data_end(), Some(Lsn(128)));
    let k = WalEvent::Keepalive {
        wal_end: Lsn(500),
        send_time_ms: 0,
        reply_requested: false,
    };
    assert_eq!(k.data_end(), None);
}

#[test]
fn sizes_parse_with_postgres_units() {
    let cases = [
        ("16MB", 16 << 20),
        ("1GB", 1 << 30),
        ("512kB", 512 << 10),
        ("8192B", 8192),
        ("8192", 8192),
        ("2TB", 2 << 40),
    ];
    for (i, (s, v)) in cases.iter().enumerate() {
        assert_eq!(parse_size(s).unwrap(), *v, "#{i}: {s}");
    }
    for bad in [
        "",
        "MB",
        "16mb",
        "16 XB",
        "-1MB",
        "99999999999999999999MB",
        "17179869184TB",
    ] {
        assert!(parse_size(bad).is_err(), "{bad:?}");
    }
}

fn rs(cols: &[&str], row: &[Option<&[u8]>]) -> ResultSet {
    ResultSet {
        columns: cols.iter().map(|c| c.to_string()).collect(),
        rows: vec![row.iter().map(|v| v.map(<[u8]>::to_vec)).collect()],
    }
}

#[test]
fn identify_system_result_is_read_and_bad_values_named() {
    let cols = ["systemid", "timeline", "xlogpos", "dbname"];
    let good = rs(
        &cols,
        &[
            Some(b"7300000000000000001"),
            Some(b"3"),
            Some(b"0/3000148"),
            None,
        ],
    );
    assert_eq!(
        system_info(&good).unwrap(),
        SystemInfo {
            system_id: "7300000000000000001".into(),
            timeline: 3,
            xlog_pos: Lsn(0x300_0148),
        }
    );
    let bad_tli = rs(&cols, &[Some(b"1"), Some(b"x"), Some(b"0/1"), None]);
    assert!(system_info(&bad_tli)
        .unwrap_err()
        .to_string()
        .contains("timeline \"x\""));
    let bad_pos = rs(&cols, &[Some(b"1"), Some(b"1"), Some(b"zz"), None]);
    assert!(system_info(&bad_pos)
        .unwrap_err()
        .to_string()
        .contains("IDENTIFY_SYSTEM"));
    let missing = rs(&["systemid"], &[Some(b"1")]);
    assert!(system_info(&missing)
        .unwrap_err()
        .to_string()
        .contains("no column \"timeline\""));
    assert!(system_info(&ResultSet::default()).is_err());
}

#[test]
fn read_replication_slot_result_gives_none_for_a_missing_slot() {
    let cols = ["slot_type", "restart_lsn", "restart_tli"];
    let some = rs(&cols, &[Some(b"physical"), Some(b"0/2000060"), Some(b"1")]);
    assert_eq!(slot_restart(&some).unwrap(), Some((Lsn(0x200_0060), 1)));
    let none = rs(&cols, &[None, None, None]);
    assert_eq!(slot_restart(&none).unwrap(), None);
    let bad = rs(&cols, &[Some(b"physical"), Some(b"0/1"), Some(b"-1")]);
    assert!(slot_restart(&bad).is_err());
}

#[test]
fn timeline_history_result_needs_a_plain_file_name() {
    let cols = ["filename", "content"];
    let ok = rs(
        &cols,
        &[
            Some(b"00000002.history"),
            Some(b"1\t0/3000148\tno recovery target\n"),
        ],
    );
    let (name, content) = timeline_history(&ok).unwrap();
    assert_eq!(name, "00000002.history");
    assert!(content.starts_with(b"1\t0/3000148"));
    for bad in [&b"../etc/passwd"[..], b"", b".history", b"a/b"] {
        let r = rs(&cols, &[Some(bad), Some(b"")]);
        assert!(timeline_history(&r).is_err(), "{bad:?}");
    }
    assert!(timeline_history(&rs(&cols, &[Some(b"00000002.history"), None])).is_err());
}

#[test]
fn end_of_timeline_result_names_the_next_timeline() {
    let cols = ["next_tli", "next_tli_startpos"];
    assert_eq!(
        end_of_timeline(&rs(&cols, &[Some(b"2"), Some(b"0/3000148")])).unwrap(),
        WalEvent::EndOfTimeline {
            next_timeline: Some(2),
            next_start: Some(Lsn(0x300_0148)),
        }
    );
    assert_eq!(
        end_of_timeline(&ResultSet::default()).unwrap(),
        WalEvent::EndOfTimeline {
            next_timeline: None,
            next_start: None,
        }
    );
    assert!(end_of_timeline(&rs(&cols, &[Some(b"two"), None])).is_err());
}

#[test]
fn slot_names_are_checked_before_they_reach_a_command() {
    for ok in ["tandem", "tandem_g1_db", "a", &"x".repeat(63)] {
        check_slot_name(ok).unwrap();
    }
    for bad in ["", "Tandem", "a-b", "a b", "x; DROP", "é", &"x".repeat(64)] {
        let e = check_slot_name(bad).unwrap_err();
        assert!(e.to_string().contains("replication slot name"), "{bad:?}");
    }
}

#[test]
fn server_errors_name_the_call_sqlstate_and_message_and_say_if_retryable() {
    let f = ErrorFields(vec![
        (b'C', "42704".into()),
        (b'M', "replication slot \"nope\" does not exist".into()),
        (b'H', "create it".into()),
    ]);
    let e = PgReplError::server("START_REPLICATION", &f);
    assert_eq!(
        e.to_string(),
        "START_REPLICATION: server error 42704: replication slot \"nope\" does not exist (hint: create it)"
    );
    assert!(!e.is_retryable());
    let shutdown = ErrorFields(vec![(b'C', "57P01".into())]);
    assert!(PgReplError::server("x", &shutdown).is_retryable());
    let slot_busy = ErrorFields(vec![(b'C', "55006".into())]);
    assert!(PgReplError::server("x", &slot_busy).is_retryable());
    let other_55 = ErrorFields(vec![(b'C', "55000".into())]);
    assert!(!PgReplError::server("x", &other_55).is_retryable());
    assert_eq!(ErrorFields::default().sqlstate(), "?????");
}

proptest::proptest! {
    /// The fuzz target's property on every run of the suite: arbitrary bytes never panic the
    /// decoder, and whatever decodes re-encodes to exactly the bytes it came from.
    #[test]
    fn arbitrary_bytes_decode_to_messages_that_re_encode_to_the_same_bytes(
        tag in proptest::sample::select(b"RSKZTDCIEWdcNv".to_vec()),
        body in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
    ) {
        let mut buf = vec![tag];
        buf.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        buf.extend_from_slice(&body);
        if let Ok(Some((msg, used))) = decode(&buf) {
            proptest::prop_assert_eq!(used, buf.len());
            proptest::prop_assert_eq!(msg.encode(), buf);
        }
        if let Ok(r) = ReplicationMessage::decode(body.clone()) {
            proptest::prop_assert_eq!(r.encode(), body);
        }
    }
}

proptest::proptest! {
    /// Valid messages with one byte replaced, inserted or deleted (the length field then
    /// corrected): the decoder either refuses them or decodes something that re-encodes to the
    /// same bytes.
    #[test]
    fn mutated_valid_messages_are_refused_or_round_trip(
        pick in 0usize..20,
        at in 0usize..64,
        to in proptest::num::u8::ANY,
        op in 0u8..3,
    ) {
        let all = samples();
        let mut buf = all[pick % all.len()].encode();
        let i = at % buf.len();
        match op {
            0 => buf[i] = to,
            1 => buf.insert(i.max(5), to),
            _ if buf.len() > 5 => {
                buf.remove(i.max(5));
            }
            _ => {}
        }
        if op > 0 {
            let len = (buf.len() - 1) as i32;
            buf[1..5].copy_from_slice(&len.to_be_bytes());
        }
        let mut rest = &buf[..];
        while let Ok(Some((msg, used))) = decode(rest) {
            proptest::prop_assert_eq!(msg.encode(), rest[..used].to_vec());
            rest = &rest[used..];
        }
    }
}

#[test]
fn debug_never_shows_the_password() {
    let secret = "pw-7c1e5a93-never-printed";
    let cfg = ConnConfig {
        host: "127.0.0.1".into(),
        port: 5432,
        user: "tandem".into(),
        password: Some(secret.into()),
        application_name: "tandem_pg_db".into(),
        connect_timeout: std::time::Duration::from_secs(5),
    };
    let shown = format!("{cfg:?}");
    assert!(
        !shown.contains(secret) && shown.contains("<redacted>"),
        "{shown}"
    );
    let scram = super::scram::ScramClient::new("", secret, "nonce");
    assert!(!format!("{scram:?}").contains(secret));
}
