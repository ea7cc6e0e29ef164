//! Users, identities, dedupe marks, handoffs, tokens, login codes and conversations on both
//! engines: the cases of the sled modules (with the relational round trips counted there).

use chatrelay_core::{Platform, UserKey};

use super::{assert_trips, engines, key, rel, sent, winners};
use crate::rel::tests::sql;
use crate::{Admission, StoreError, TOKEN_PREFIX, Uid, display_login_code};

#[tokio::test]
async fn users_and_identities() {
    for (engine, s) in engines().await {
        let a = s.create_user("a").await.unwrap();
        let b = s.create_user("b").await.unwrap();
        assert!(
            b.uid > a.uid && !a.banned && a.groups.is_empty(),
            "{engine}"
        );
        assert_eq!(s.user(b.uid).await.unwrap(), Some(b), "{engine}");
        assert_eq!(s.user(Uid(99_999)).await.unwrap(), None, "{engine}");
        let uid = s.resolve_identity(&key("o1"), Some("Alice")).await.unwrap();
        assert_eq!(
            s.resolve_identity(&key("o1"), Some("Other")).await.unwrap(),
            uid,
            "{engine}"
        );
        assert_eq!(
            s.user(uid).await.unwrap().unwrap().name,
            "Alice",
            "{engine}"
        );
        let other = s.resolve_identity(&key("o2"), None).await.unwrap();
        assert_ne!(other, uid, "{engine}");
        assert_eq!(
            s.user(other).await.unwrap().unwrap().name,
            "mp:main:o2",
            "{engine}"
        );
        assert_eq!(s.identity(&key("o1")).await.unwrap(), Some(uid), "{engine}");
        assert_eq!(s.identity(&key("nobody")).await.unwrap(), None, "{engine}");
        assert_eq!(
            s.identities_of(uid).await.unwrap(),
            vec![key("o1")],
            "{engine}"
        );
        let web = UserKey::new(Platform::Web, "", "s1");
        let w = s.resolve_identity(&web, None).await.unwrap();
        assert_eq!(s.identities_of(w).await.unwrap(), vec![web], "{engine}");
        // A new user's balance exists at once.
        assert_eq!(s.balance(w, 0, 3).await.unwrap().available, 3, "{engine}");
        let long = "x".repeat(600);
        assert!(
            matches!(
                s.resolve_identity(&key("o3"), Some(&long)).await,
                Err(StoreError::InvalidInput(_))
            ),
            "{engine}"
        );
        assert_eq!(
            s.resolve_identity(&key("o1"), Some(&long)).await.unwrap(),
            uid,
            "{engine}"
        );
    }
}

/// Sled's `admit_marks_the_message_and_resolves_its_sender_once`, plus the round trips.
#[tokio::test]
async fn admit_marks_the_message_and_resolves_its_sender_once() {
    for (engine, s) in engines().await {
        let before = sent(&s);
        let first = s
            .admit(&key("o1"), Some("Ann"), "m1", 100, 0)
            .await
            .unwrap();
        assert_trips(engine, &s, before, 1);
        let Admission::New(uid) = first else {
            panic!("{engine}: a new message is admitted: {first:?}")
        };
        assert_eq!(s.identity(&key("o1")).await.unwrap(), Some(uid), "{engine}");
        assert_eq!(s.user(uid).await.unwrap().unwrap().name, "Ann", "{engine}");
        // The same message again, while its mark lives: seen, nothing written.
        assert_eq!(
            s.admit(&key("o1"), None, "m1", 200, 50).await.unwrap(),
            Admission::Seen,
            "{engine}"
        );
        assert!(
            !s.dedupe_insert("m1", 200, 50).await.unwrap(),
            "{engine}: one mark table"
        );
        // A seen message from a new sender creates no user.
        assert_eq!(
            s.admit(&key("o2"), None, "m1", 200, 50).await.unwrap(),
            Admission::Seen,
            "{engine}"
        );
        assert_eq!(s.identity(&key("o2")).await.unwrap(), None, "{engine}");
        assert_eq!(s.user_count().await.unwrap(), 1, "{engine}");
        // The next message of the same sender: the same user; an expired mark admits again.
        let before = sent(&s);
        assert_eq!(
            s.admit(&key("o1"), None, "m2", 100, 0).await.unwrap(),
            Admission::New(uid),
            "{engine}"
        );
        assert_trips(engine, &s, before, 1);
        assert_eq!(
            s.admit(&key("o1"), None, "m1", 300, 100).await.unwrap(),
            Admission::New(uid),
            "{engine}"
        );
        assert_eq!(s.user_count().await.unwrap(), 1, "{engine}");
        assert!(
            s.admit(&key("o1"), None, "", 1, 0).await.is_err(),
            "{engine}"
        );
        // A name too long matters only when a user is made.
        let long = "x".repeat(1000);
        assert!(
            s.admit(&key("o3"), Some(&long), "m3", 100, 0)
                .await
                .is_err(),
            "{engine}"
        );
        assert_eq!(
            s.admit(&key("o1"), Some(&long), "m4", 100, 0)
                .await
                .unwrap(),
            Admission::New(uid),
            "{engine}"
        );
    }
}

/// Sled's `racing_admits_admit_a_message_once_and_make_one_user`, and racing first messages
/// of one new sender making one user.
#[tokio::test]
async fn racing_admits_admit_a_message_once_and_make_one_user() {
    for (engine, s) in engines().await {
        let admitted = winners(&s, 8, |s, _| async move {
            matches!(
                s.admit(&key("racer"), None, "same", 100, 0).await.unwrap(),
                Admission::New(_)
            )
        })
        .await;
        assert_eq!(admitted, 1, "{engine}");
        let distinct = winners(&s, 8, |s, i| async move {
            matches!(
                s.admit(&key("burst"), None, &format!("b{i}"), 100, 0)
                    .await
                    .unwrap(),
                Admission::New(_)
            )
        })
        .await;
        assert_eq!(distinct, 8, "{engine}: different messages are all admitted");
        assert_eq!(
            s.user_count().await.unwrap(),
            2,
            "{engine}: one user per sender"
        );
    }
}

#[tokio::test]
async fn dedupe_marks_plain_and_bound() {
    for (engine, s) in engines().await {
        assert!(s.dedupe_insert("m1", 100, 0).await.unwrap(), "{engine}");
        assert!(!s.dedupe_insert("m1", 200, 50).await.unwrap(), "{engine}");
        assert!(!s.dedupe_insert("m1", 200, 99).await.unwrap(), "{engine}");
        assert!(
            s.dedupe_insert("m1", 300, 100).await.unwrap(),
            "{engine}: expired at 100"
        );
        assert!(!s.dedupe_insert("m1", 400, 150).await.unwrap(), "{engine}");
        assert!(
            s.dedupe_bind("n1", "body-a", 100, 0).await.unwrap(),
            "{engine}"
        );
        assert!(
            s.dedupe_bind("n1", "body-a", 100, 10).await.unwrap(),
            "{engine}: same again"
        );
        assert!(
            !s.dedupe_bind("n1", "body-b", 100, 20).await.unwrap(),
            "{engine}"
        );
        assert!(
            !s.dedupe_insert("n1", 100, 30).await.unwrap(),
            "{engine}: a bound mark is live"
        );
        assert!(
            !s.dedupe_bind("m1", "x", 500, 200).await.unwrap(),
            "{engine}: a plain one too"
        );
        assert!(
            s.dedupe_bind("n1", "body-b", 200, 100).await.unwrap(),
            "{engine}"
        );
        assert!(
            !s.dedupe_bind("n1", "body-a", 200, 150).await.unwrap(),
            "{engine}"
        );
        assert_eq!(s.purge_expired_dedupe(150).await.unwrap(), 0, "{engine}");
        assert_eq!(s.purge_expired_dedupe(300).await.unwrap(), 2, "{engine}");
        assert!(s.dedupe_insert("", 1, 0).await.is_err(), "{engine}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_marks_have_one_winner() {
    for (engine, s) in engines().await {
        for round in 0..10 {
            let k = format!("k{round}");
            if round % 2 == 0 {
                // An expired mark: every caller goes through the update.
                s.dedupe_insert(&k, 5, 0).await.unwrap();
            }
            let key = k.clone();
            let wins = winners(&s, 8, move |s, _| {
                let key = key.clone();
                async move { s.dedupe_insert(&key, 1_000, 10).await.unwrap() }
            })
            .await;
            assert_eq!(wins, 1, "{engine}: insert, round {round}");
            let key = format!("b{round}");
            let wins = winners(&s, 8, move |s, i| {
                let key = key.clone();
                async move {
                    s.dedupe_bind(&key, &format!("v{i}"), 1_000, 10)
                        .await
                        .unwrap()
                }
            })
            .await;
            assert_eq!(wins, 1, "{engine}: bind, round {round}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handoffs_put_read_swap_take_once() {
    for (engine, s) in engines().await {
        s.put_handoff("t1", "pending", 1_000).await.unwrap();
        assert_eq!(
            s.handoff("t1", 10).await.unwrap().as_deref(),
            Some("pending"),
            "{engine}"
        );
        assert!(
            !s.swap_handoff("t1", "other", "done:1", 1_000, 10)
                .await
                .unwrap(),
            "{engine}"
        );
        assert!(
            s.swap_handoff("t1", "pending", "done:1", 1_000, 10)
                .await
                .unwrap(),
            "{engine}"
        );
        assert!(
            !s.swap_handoff("t1", "pending", "done:2", 1_000, 10)
                .await
                .unwrap(),
            "{engine}"
        );
        assert_eq!(
            s.take_handoff("t1", 20).await.unwrap().as_deref(),
            Some("done:1"),
            "{engine}"
        );
        assert_eq!(
            s.take_handoff("t1", 20).await.unwrap(),
            None,
            "{engine}: taken once"
        );
        s.put_handoff("t2", "pending", 100).await.unwrap();
        assert_eq!(
            s.handoff("t2", 100).await.unwrap(),
            None,
            "{engine}: expired"
        );
        assert!(
            !s.swap_handoff("t2", "pending", "x", 500, 100)
                .await
                .unwrap(),
            "{engine}"
        );
        assert_eq!(s.take_handoff("t2", 100).await.unwrap(), None, "{engine}");
        s.put_handoff("t3", "x", 100).await.unwrap();
        assert_eq!(s.purge_expired_dedupe(200).await.unwrap(), 1, "{engine}");
        for round in 0..10 {
            let k = format!("race{round}");
            s.put_handoff(&k, "v", 1_000).await.unwrap();
            let wins = winners(&s, 8, move |s, _| {
                let k = k.clone();
                async move { s.take_handoff(&k, 10).await.unwrap().is_some() }
            })
            .await;
            assert_eq!(wins, 1, "{engine}: round {round}");
        }
    }
}

fn hex_of(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

#[tokio::test]
async fn login_codes_one_live_per_user_single_use() {
    for (engine, s) in engines().await {
        let a = s.create_user("a").await.unwrap().uid;
        let b = s.create_user("b").await.unwrap().uid;
        let c1 = s.login_code(a, 300_000, 1_000).await.unwrap();
        assert_eq!(c1.code.len(), 8, "{engine}");
        assert_eq!(
            s.login_code(a, 300_000, 2_000).await.unwrap(),
            c1,
            "{engine}: the same code"
        );
        let cb = s.login_code(b, 300_000, 2_000).await.unwrap();
        assert_ne!(cb.code, c1.code, "{engine}");
        let typed = display_login_code(&c1.code).to_lowercase();
        assert_eq!(
            s.consume_login_code(&typed, 3_000).await.unwrap(),
            Some(a),
            "{engine}"
        );
        assert_eq!(
            s.consume_login_code(&c1.code, 3_000).await.unwrap(),
            None,
            "{engine}: once"
        );
        // An expired code is replaced by a new one, and does not work.
        let short = s.login_code(b, 1, 300_000).await;
        assert_eq!(short.unwrap(), cb, "{engine}: still live at 300,000");
        let fresh = s.login_code(b, 1_000, 400_000).await.unwrap();
        assert!(fresh.expires_at_ms == 401_000, "{engine}");
        assert_eq!(
            s.consume_login_code(&fresh.code, 401_000).await.unwrap(),
            None,
            "{engine}"
        );
        let d = s.login_code(a, 1_000, 20_000).await.unwrap();
        assert_eq!(
            s.purge_expired_login_codes(30_000).await.unwrap(),
            1,
            "{engine}"
        );
        assert_eq!(
            s.consume_login_code(&d.code, 20_500).await.unwrap(),
            None,
            "{engine}: purged"
        );
        assert_eq!(
            s.consume_login_code("1234567U", 0).await.unwrap(),
            None,
            "{engine}"
        );
        assert!(
            matches!(
                s.login_code(Uid(99_999), 1_000, 0).await,
                Err(StoreError::UnknownUser(_))
            ),
            "{engine}"
        );
    }
}

fn turn(n: i64) -> crate::Turn {
    crate::Turn {
        role: if n % 2 == 0 { "user" } else { "assistant" }.to_owned(),
        content: format!("message {n}"),
        at_ms: n,
    }
}

#[tokio::test]
async fn conversations_keep_the_newest_turns() {
    for (engine, s) in engines().await {
        assert!(s.conversation("c").await.unwrap().is_empty(), "{engine}");
        s.append_turns("c", &[turn(1), turn(2)], 3).await.unwrap();
        s.append_turns("c", &[turn(3), turn(4)], 3).await.unwrap();
        assert_eq!(
            s.conversation("c").await.unwrap(),
            vec![turn(2), turn(3), turn(4)],
            "{engine}"
        );
        let four = [turn(5), turn(6), turn(7), turn(8)];
        s.append_turns("c", &four, 3).await.unwrap();
        assert_eq!(
            s.conversation("c").await.unwrap(),
            vec![turn(6), turn(7), turn(8)],
            "{engine}"
        );
        assert!(
            s.conversation("other").await.unwrap().is_empty(),
            "{engine}"
        );
        s.clear_conversation("c").await.unwrap();
        assert!(s.conversation("c").await.unwrap().is_empty(), "{engine}");
        s.append_turns("c", &[turn(1)], 10).await.unwrap();
        s.append_turns("c", &[turn(2)], 0).await.unwrap();
        assert!(
            s.conversation("c").await.unwrap().is_empty(),
            "{engine}: 0 clears"
        );
        assert!(s.append_turns("", &[turn(1)], 1).await.is_err(), "{engine}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_all_land() {
    for (engine, s) in engines().await {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    for j in 0..10 {
                        s.append_turns("c", &[turn(i * 100 + j)], 1000)
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(s.conversation("c").await.unwrap().len(), 80, "{engine}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_first_contacts_make_one_user() {
    for (engine, s) in engines().await {
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.resolve_identity(&key("racer"), None).await.unwrap() })
            })
            .collect();
        let mut uids = Vec::new();
        for t in tasks {
            uids.push(t.await.unwrap());
        }
        assert!(uids.iter().all(|u| *u == uids[0]), "{engine}");
        assert_eq!(
            s.user_count().await.unwrap(),
            1,
            "{engine}: no orphan users from the losers"
        );
    }
}

#[tokio::test]
async fn tokens_are_hashed_revocable_and_expire() {
    for (engine, s) in engines().await {
        let uid = s.create_user("u").await.unwrap().uid;
        let token = s.create_token(uid, "laptop", None, 1).await.unwrap();
        let secret = token.strip_prefix(TOKEN_PREFIX).unwrap();
        assert!(
            secret.len() == 48 && secret.bytes().all(|b| b.is_ascii_hexdigit()),
            "{engine}"
        );
        assert_eq!(s.token_uid(&token, 2).await.unwrap(), Some(uid), "{engine}");
        assert_eq!(
            s.token_uid("sk-cr-nope", 2).await.unwrap(),
            None,
            "{engine}"
        );
        assert!(
            matches!(
                s.create_token(Uid(99_999), "x", None, 1).await,
                Err(StoreError::UnknownUser(_))
            ),
            "{engine}"
        );
        assert!(
            s.create_token(uid, "c", Some(1), 1).await.is_err(),
            "{engine}"
        );
        let short = s.create_token(uid, "short", Some(100), 2).await.unwrap();
        assert_eq!(
            s.token_uid(&short, 99).await.unwrap(),
            Some(uid),
            "{engine}"
        );
        assert_eq!(s.token_uid(&short, 100).await.unwrap(), None, "{engine}");
        assert!(s.revoke_token(&token, 5).await.unwrap(), "{engine}");
        assert!(!s.revoke_token(&token, 6).await.unwrap(), "{engine}");
        assert!(
            !s.revoke_token("sk-cr-unknown", 6).await.unwrap(),
            "{engine}"
        );
        assert_eq!(s.token_uid(&token, 7).await.unwrap(), None, "{engine}");
        let infos = s.tokens_of(uid).await.unwrap();
        assert_eq!(infos.len(), 2, "{engine}");
        assert_eq!(
            (infos[0].label.as_str(), infos[0].revoked),
            ("laptop", true),
            "{engine}"
        );
        assert_eq!(infos[1].expires_at_ms, Some(100), "{engine}");
        assert_eq!(infos[0].hash_prefix.len(), 12, "{engine}");
        // Only the hash is stored: no column of any token row holds the secret.
        if let Some(r) = rel(&s) {
            let rows = sql(r, "SELECT t::text AS row FROM tokens t", &[]).await;
            assert_eq!(rows.len(), 2, "{engine}");
            for row in &rows {
                let text: String = row.get("row");
                assert!(
                    !text.contains(secret),
                    "{engine}: token text stored: {text}"
                );
                assert!(
                    text.contains(&hex_of(&crate::tokens::token_hash(&token)))
                        || text.contains("short"),
                    "{engine}"
                );
            }
        }
    }
}

#[tokio::test]
async fn the_reads_after_admission_are_one_statement_and_the_same_on_every_engine() {
    for (engine, s) in engines().await {
        let uid = s.resolve_identity(&key("r1"), Some("Rita")).await.unwrap();
        s.set_checkpoint(&format!("pref:{}:model", uid.0), Some("m2"))
            .await
            .unwrap();
        let turns = [
            crate::Turn {
                role: "user".into(),
                content: "q1".into(),
                at_ms: 1,
            },
            crate::Turn {
                role: "assistant".into(),
                content: "a1".into(),
                at_ms: 2,
            },
        ];
        s.append_turns("mp:main:r1", &turns, 10).await.unwrap();
        let prefs = [
            format!("pref:{}:model", uid.0),
            format!("pref:{}:role", uid.0),
        ];
        let before = sent(&s);
        let read = s
            .admitted_reads(uid, Some("mp:main:r1"), &prefs)
            .await
            .unwrap();
        assert_trips(engine, &s, before, 1);
        assert_eq!(read.user, s.user(uid).await.unwrap(), "{engine}");
        assert_eq!(read.checkpoints, vec![Some("m2".into()), None], "{engine}");
        assert_eq!(read.turns, turns, "{engine}");
        // Without a conversation, no turns; an unknown user, nothing.
        let bare = s.admitted_reads(uid, None, &prefs).await.unwrap();
        assert!(bare.turns.is_empty() && bare.user.is_some(), "{engine}");
        let nobody = s
            .admitted_reads(Uid(987_654), Some("mp:main:r1"), &prefs)
            .await
            .unwrap();
        assert_eq!(nobody, crate::AdmittedReads::default(), "{engine}");
    }
}
