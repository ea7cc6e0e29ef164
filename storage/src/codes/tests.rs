use super::*;
use crate::Balance;

fn credits(n: u64) -> CodeGrant {
    CodeGrant::Credits { credits: n }
}

fn paid(store: &KvStore, uid: Uid) -> u64 {
    let b: Balance = store.balance(uid, 0, 0).unwrap();
    b.paid
}

#[test]
fn generated_codes_are_long_uniform_and_distinct() {
    let mut seen = std::collections::HashSet::new();
    let mut symbols = std::collections::HashMap::<char, usize>::new();
    for _ in 0..2_000 {
        let code = random_redeem_code().unwrap();
        assert_eq!(code.len(), REDEEM_CODE_CHARS);
        for c in code.chars() {
            assert!(REDEEM_CODE_ALPHABET.contains(&(c as u8)), "{code}");
            *symbols.entry(c).or_default() += 1;
        }
        assert!(seen.insert(code), "a repeated code");
    }
    // 32,000 symbols over 30: about 1,067 each; every symbol drawn, none far off.
    assert_eq!(symbols.len(), REDEEM_CODE_ALPHABET.len());
    for (c, n) in symbols {
        assert!((800..1_350).contains(&n), "{c} drawn {n} times");
    }
}

#[test]
fn the_alphabet_has_no_look_alikes() {
    for c in b"01OILU" {
        assert!(!REDEEM_CODE_ALPHABET.contains(c), "{}", char::from(*c));
    }
    let mut sorted = REDEEM_CODE_ALPHABET.to_vec();
    sorted.dedup();
    assert_eq!(sorted.len(), REDEEM_CODE_ALPHABET.len());
}

#[test]
fn codes_are_shown_in_groups_and_read_back_however_typed() {
    let canonical = "K7QM2XRT9HWAPZ3C";
    let shown = display_redeem_code(canonical);
    assert_eq!(shown, "K7QM-2XRT-9HWA-PZ3C");
    for typed in [
        shown.as_str(),
        "k7qm-2xrt-9hwa-pz3c",
        " K7QM 2XRT\t9HWA PZ3C \n",
        "K7QM2XRT9HWAPZ3C",
        "k7qm—2xrt–9hwa_pz3c",
        "Ｋ７ＱＭ－２ＸＲＴ　９ＨＷＡ－ＰＺ３Ｃ",
    ] {
        assert_eq!(
            normalize_redeem_code(typed).as_deref(),
            Some(canonical),
            "{typed:?}"
        );
    }
    for bad in [
        "",
        "K7QM-2XRT-9HWA",       // too short
        "K7QM-2XRT-9HWA-PZ3CX", // too long
        "K7QM-2XRT-9HWA-PZ3O",  // O is not in the alphabet
        "K7QM-2XRT-9HWA-PZ31",  // nor 1
        "K7QM-2XRT-9HWA-PZ3é",
        "K7QM/2XRT/9HWA/PZ3C",
    ] {
        assert_eq!(normalize_redeem_code(bad), None, "{bad:?}");
    }
}

#[test]
fn a_batch_is_bounded_and_stored_hashed() {
    let store = KvStore::open_temporary().unwrap();
    for count in [0, MAX_CODES_PER_BATCH + 1] {
        assert!(matches!(
            store.create_code_batch(credits(5), count, None, "", 1),
            Err(StoreError::InvalidInput(_))
        ));
    }
    assert!(store.create_code_batch(credits(0), 1, None, "", 1).is_err());
    let (batch, codes) = store
        .create_code_batch(credits(5), 3, Some(1_000), "shop A", 1)
        .unwrap();
    assert_eq!((batch.count, batch.note.as_str()), (3, "shop A"));
    assert_eq!(codes.len(), 3);
    assert_eq!(store.code_batch(batch.id).unwrap(), Some(batch.clone()));
    assert_eq!(store.code_batches(10).unwrap(), vec![batch.clone()]);
    let listed = store.batch_codes(batch.id).unwrap();
    assert_eq!(
        listed.iter().map(CodeRecord::id).collect::<Vec<_>>(),
        (1..=3).map(|n| code_id(batch.id, n)).collect::<Vec<_>>()
    );
    assert!(listed.iter().all(|c| c.state == CodeState::Unused));
    // No tree holds a code's text, in any form.
    let t = store.trees().unwrap();
    for code in &codes {
        let canonical = normalize_redeem_code(code).unwrap();
        for (name, tree) in t.all() {
            for item in tree.iter() {
                let (k, v) = item.unwrap();
                for needle in [canonical.as_bytes(), code.as_bytes()] {
                    assert!(
                        !k.windows(needle.len()).any(|w| w == needle)
                            && !v.windows(needle.len()).any(|w| w == needle),
                        "tree {name} holds a code"
                    );
                }
            }
        }
    }
}

#[test]
fn a_code_credits_once_through_the_ledger() {
    let store = KvStore::open_temporary().unwrap();
    let a = store.create_user("a").unwrap().uid;
    let b = store.create_user("b").unwrap().uid;
    let (batch, codes) = store
        .create_code_batch(credits(50), 2, None, "", 1)
        .unwrap();
    let typed = codes[0].to_lowercase().replace('-', " ");
    let RedeemOutcome::Redeemed { code, grant, entry } = store.redeem_code(a, &typed, 10).unwrap()
    else {
        panic!("not redeemed");
    };
    assert_eq!(code, code_id(batch.id, 1));
    assert_eq!(grant, credits(50));
    assert_eq!(entry.reference, code_reference(batch.id, 1));
    assert_eq!((entry.paid_delta, entry.paid_after), (50, 50));
    assert_eq!(entry.kind, EntryKind::Purchase);
    assert_eq!(paid(&store, a), 50);
    assert_eq!(
        store.redeem_code(a, &codes[0], 11).unwrap(),
        RedeemOutcome::AlreadyUsed { by_you: true }
    );
    assert_eq!(
        store.redeem_code(b, &codes[0], 11).unwrap(),
        RedeemOutcome::AlreadyUsed { by_you: false }
    );
    assert_eq!((paid(&store, a), paid(&store, b)), (50, 0));
    assert_eq!(store.ledger(a, 10).unwrap().len(), 1);
    assert_eq!(
        store.batch_codes(batch.id).unwrap()[0].state,
        CodeState::Used { uid: a, at_ms: 10 }
    );
    assert_eq!(store.code_redemptions().unwrap(), vec![(10, 50)]);
    assert!(store.audit().unwrap().mismatches.is_empty());
}

#[test]
fn unknown_revoked_expired_and_plan_codes_change_nothing() {
    let store = KvStore::open_temporary().unwrap();
    let a = store.create_user("a").unwrap().uid;
    let (live, codes) = store.create_code_batch(credits(7), 3, None, "", 1).unwrap();
    let (_, old) = store
        .create_code_batch(credits(7), 1, Some(100), "", 1)
        .unwrap();
    let (_, plan) = store
        .create_code_batch(
            // Made before plans existed: no days.
            CodeGrant::Plan {
                plan: "month".into(),
                name: String::new(),
                days: 0,
                daily_credits: 0,
                utc_offset_secs: 0,
            },
            1,
            None,
            "",
            1,
        )
        .unwrap();
    assert!(matches!(
        store.redeem_code(a, &codes[0], 5).unwrap(),
        RedeemOutcome::Redeemed { .. }
    ));
    assert_eq!(store.revoke_code_batch(live.id, 6).unwrap(), Some(2));
    assert_eq!(
        store.revoke_code_batch(live.id, 7).unwrap(),
        Some(0),
        "again"
    );
    assert_eq!(store.revoke_code_batch(424_242, 7).unwrap(), None);
    let states: Vec<CodeState> = store
        .batch_codes(live.id)
        .unwrap()
        .into_iter()
        .map(|c| c.state)
        .collect();
    assert_eq!(
        states,
        vec![
            CodeState::Used { uid: a, at_ms: 5 },
            CodeState::Revoked { at_ms: 6 },
            CodeState::Revoked { at_ms: 6 }
        ]
    );
    assert_eq!(
        store.code_batch(live.id).unwrap().unwrap().revoked_at_ms,
        Some(6)
    );
    assert_eq!(
        store.redeem_code(a, &codes[1], 8).unwrap(),
        RedeemOutcome::Revoked
    );
    assert_eq!(
        store.redeem_code(a, &old[0], 100).unwrap(),
        RedeemOutcome::Expired
    );
    assert_eq!(
        store
            .redeem_code(a, &random_redeem_code().unwrap(), 8)
            .unwrap(),
        RedeemOutcome::Unknown
    );
    assert_eq!(
        store.redeem_code(a, "not a code", 8).unwrap(),
        RedeemOutcome::Unknown
    );
    assert!(matches!(
        store.redeem_code(a, &plan[0], 8),
        Err(StoreError::Unsupported(_))
    ));
    assert_eq!(paid(&store, a), 7);
    assert_eq!(store.ledger(a, 10).unwrap().len(), 1);
    let ghost = Uid(9_999);
    let (_, more) = store.create_code_batch(credits(1), 1, None, "", 1).unwrap();
    assert!(matches!(
        store.redeem_code(ghost, &more[0], 8),
        Err(StoreError::UnknownUser(_))
    ));
    assert!(matches!(
        store.redeem_code(a, &more[0], 9).unwrap(),
        RedeemOutcome::Redeemed { .. }
    ));
}

#[test]
fn twenty_users_racing_for_one_code_credit_once() {
    let store = KvStore::open_temporary().unwrap();
    let users: Vec<Uid> = (0..20)
        .map(|i| store.create_user(&format!("u{i}")).unwrap().uid)
        .collect();
    let (_, codes) = store
        .create_code_batch(credits(30), 1, None, "", 1)
        .unwrap();
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(users.len()));
    let outcomes: Vec<RedeemOutcome> = std::thread::scope(|s| {
        let handles: Vec<_> = users
            .iter()
            .map(|&uid| {
                let (store, barrier, code) = (store.clone(), barrier.clone(), codes[0].clone());
                s.spawn(move || {
                    barrier.wait();
                    store.redeem_code(uid, &code, 2).unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won = outcomes
        .iter()
        .filter(|o| matches!(o, RedeemOutcome::Redeemed { .. }))
        .count();
    let lost = outcomes
        .iter()
        .filter(|o| **o == RedeemOutcome::AlreadyUsed { by_you: false })
        .count();
    assert_eq!((won, lost), (1, 19), "{outcomes:?}");
    let total: u64 = users.iter().map(|&u| paid(&store, u)).sum();
    assert_eq!(total, 30);
    assert_eq!(store.code_redemptions().unwrap().len(), 1);
}

#[test]
fn a_backup_keeps_the_codes() {
    let store = KvStore::open_temporary().unwrap();
    let a = store.create_user("a").unwrap().uid;
    let (batch, codes) = store
        .create_code_batch(credits(3), 2, None, "n", 1)
        .unwrap();
    store.redeem_code(a, &codes[0], 2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let copy = KvStore::open(&dir.path().join("copy"), 1 << 20).unwrap();
    store.copy_into(&copy).unwrap();
    assert_eq!(
        copy.batch_codes(batch.id).unwrap(),
        store.batch_codes(batch.id).unwrap()
    );
    assert_eq!(
        copy.redeem_code(a, &codes[0], 3).unwrap(),
        RedeemOutcome::AlreadyUsed { by_you: true }
    );
    assert!(matches!(
        copy.redeem_code(a, &codes[1], 3).unwrap(),
        RedeemOutcome::Redeemed { .. }
    ));
    if store.is_shared() {
        return; // backups are sled's
    }
    let mut file = Vec::new();
    store.export_backup(&mut file, 5).unwrap();
    let restored_dir = dir.path().join("restored");
    KvStore::restore_backup(&mut file.as_slice(), &restored_dir, 1 << 20).unwrap();
    let restored = KvStore::open_closed(&restored_dir, 1 << 20).unwrap();
    assert_eq!(
        restored.code_batch(batch.id).unwrap(),
        store.code_batch(batch.id).unwrap()
    );
    assert!(matches!(
        restored.redeem_code(a, &codes[1], 6).unwrap(),
        RedeemOutcome::Redeemed { .. }
    ));
}
