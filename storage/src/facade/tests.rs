//! The domain interface on both engines: each case runs on a temporary sled database and,
//! when `CHATRELAY_TEST_PG_URL` is set (CI sets it), on a fresh relational schema, with the
//! same values and the same answers.

use crate::kv::Db;
use crate::{EntryKind, KvStore, PgOptions, Remember, Store, StoreError, Turn};

/// Every engine a case runs on, by name.
async fn engines() -> Vec<(&'static str, Store)> {
    let sled = Db::Sled(sled::Config::new().temporary(true).open().unwrap());
    let mut all = vec![(
        "sled",
        Store::from(KvStore::from_db(sled, None, 0).unwrap()),
    )];
    if let Some(url) = std::env::var("CHATRELAY_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        let opts = PgOptions {
            schema: Some(crate::open::temporary_schema()),
            ..PgOptions::new(url)
        };
        all.push(("relational", Store::open_relational(&opts).await.unwrap()));
    }
    all
}

#[tokio::test]
async fn a_message_is_admitted_reserved_settled_and_remembered_once() {
    for (engine, store) in engines().await {
        let key: chatrelay_core::UserKey = "mp:main:o1".parse().unwrap();
        let uid = match store
            .admit(&key, Some("Ann"), "m1", 10_000, 1)
            .await
            .unwrap()
        {
            crate::Admission::New(uid) => uid,
            crate::Admission::Seen => panic!("{engine}: a first message seen"),
        };
        assert!(
            matches!(
                store.admit(&key, None, "m1", 10_000, 2).await.unwrap(),
                crate::Admission::Seen
            ),
            "{engine}"
        );
        store
            .grant(uid, 50, EntryKind::Purchase, "order", "o-1", 3)
            .await
            .unwrap();
        let id = store
            .reserve(uid, 20, "msg:1", 0, 0, i64::MAX)
            .await
            .unwrap();
        let held = store.balance(uid, 0, 0).await.unwrap();
        assert_eq!((held.paid, held.held), (50, 20), "{engine}");
        let turns = [Turn {
            role: "user".into(),
            content: "hi".into(),
            at_ms: 4,
        }];
        for at in [4, 5] {
            let remember = Remember {
                conversation: "c1",
                turns: &turns,
                max_turns: 4,
            };
            store
                .settle_metered(id, 12, "answer", 0, 0, at, Some(remember), None)
                .await
                .unwrap();
        }
        let after = store.balance(uid, 0, 0).await.unwrap();
        assert_eq!((after.paid, after.held), (38, 0), "{engine}");
        assert_eq!(store.conversation("c1").await.unwrap(), turns, "{engine}");
        let ledger = store.ledger(uid, 10).await.unwrap();
        assert_eq!(ledger.len(), 2, "{engine}");
        assert!(matches!(
            store.release(id).await,
            Ok(false) | Err(StoreError::UnknownReservation(_))
        ));
        // A grant again under its reference changes nothing.
        store
            .grant(uid, 50, EntryKind::Purchase, "order", "o-1", 6)
            .await
            .unwrap();
        assert_eq!(store.balance(uid, 0, 0).await.unwrap().paid, 38, "{engine}");
        assert!(
            store.audit().await.unwrap().mismatches.is_empty(),
            "{engine}"
        );
    }
}

#[tokio::test]
async fn leadership_and_sharing_follow_the_engine() {
    for (engine, store) in engines().await {
        let lead = store.try_lead("job").await.unwrap();
        assert!(lead.is_some(), "{engine}");
        assert_eq!(store.is_shared(), engine == "relational");
        if store.is_shared() {
            assert!(store.try_lead("job").await.unwrap().is_none());
        }
        drop(lead);
        assert!(store.probe_write().await, "{engine}");
        store.flush().await.unwrap();
    }
}
