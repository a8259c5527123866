//! The storage layer and the vault on top of it, run against SQLite and
//! PostgreSQL alike (`backend_tests!`).

use crate::common;
use chatgate::secret::ExposeSecret as _;

use std::ops::ControlFlow;
use std::sync::Arc;

use chatgate::domain::{AppId, AuditAction, AuditOutcome, KeyId, ProviderId, UserId};
use chatgate::secret::SecretString;
use chatgate::store::{AuditEvent, AuditFilter, KeyBindingRow, NewFlow, SignInRecords, Store};
use chatgate::vault::{TokenSet, Vault, VaultError, VaultKeyRing};
use common::TestDb;

fn ring(ids: &[&str]) -> (Arc<VaultKeyRing>, Vec<(KeyId, SecretString)>) {
    let keys: Vec<(KeyId, SecretString)> = ids
        .iter()
        .map(|id| (KeyId::parse(*id).unwrap(), VaultKeyRing::generate_key()))
        .collect();
    (ring_from(&keys), keys)
}

fn ring_from(keys: &[(KeyId, SecretString)]) -> Arc<VaultKeyRing> {
    Arc::new(
        VaultKeyRing::new(
            keys.iter()
                .map(|(id, k)| (id.clone(), VaultKeyRing::decode_key(k).unwrap()))
                .collect(),
        )
        .unwrap(),
    )
}

fn tokens(access: &str, refresh: Option<&str>) -> TokenSet {
    TokenSet {
        access_token: SecretString::from(access),
        refresh_token: refresh.map(SecretString::from),
        token_type: "Bearer".into(),
        scope: "openid offline_access".into(),
        expires_at: Some(2_000_000_000),
    }
}

fn ids(app: &str, user: &str) -> (AppId, UserId, ProviderId) {
    (
        AppId::parse(app).unwrap(),
        UserId::parse(user).unwrap(),
        ProviderId::parse(user.split(':').next().unwrap()).unwrap(),
    )
}

/// A bulk import: batches of many rows, each entry sealed for its own row,
/// existing entries left alone.
async fn save_many_seals_every_row_and_keeps_existing_entries(db: &TestDb) {
    let store = db.store().await;
    let (keys, _) = ring(&["k1"]);
    let vault = Vault::new(store.clone(), keys);
    let (app, existing, provider) = ids("support", "entra:user-7");
    vault
        .save(
            &app,
            &existing,
            &provider,
            &tokens("kept", Some("rt-kept")),
            50,
        )
        .await
        .unwrap();
    let users = 2 * chatgate::store::BULK_ROWS + 17;
    let entries: Vec<_> = (0..users)
        .map(|i| {
            let (app, user, provider) = ids("support", &format!("entra:user-{i}"));
            let t = tokens(&format!("at-{i}"), Some(&format!("rt-{i}")));
            (app, user, provider, t)
        })
        .collect();
    assert_eq!(
        vault.save_many(&entries, 100).await.unwrap(),
        users as u64 - 1
    );
    for i in [0, 1, chatgate::store::BULK_ROWS, users - 1] {
        let (app, user, _) = ids("support", &format!("entra:user-{i}"));
        let entry = vault.load(&app, &user).await.unwrap().unwrap();
        assert_eq!(
            entry.tokens.access_token.expose_secret(),
            &format!("at-{i}")
        );
        assert_eq!(entry.created_at, 100);
    }
    let kept = vault.load(&app, &existing).await.unwrap().unwrap();
    assert_eq!(kept.tokens.access_token.expose_secret(), "kept");
}

async fn vault_round_trip(db: &TestDb) {
    let store = db.store().await;
    let (keys, _) = ring(&["k1"]);
    let vault = Vault::new(store.clone(), keys);
    let (app, user, provider) = ids("support", "entra:alice");
    assert!(vault.load(&app, &user).await.unwrap().is_none());
    vault
        .save(&app, &user, &provider, &tokens("at-1", Some("rt-1")), 100)
        .await
        .unwrap();
    let entry = vault.load(&app, &user).await.unwrap().unwrap();
    assert_eq!(entry.tokens.access_token.expose_secret(), "at-1");
    assert_eq!(
        entry.tokens.refresh_token.as_ref().unwrap().expose_secret(),
        "rt-1"
    );
    assert_eq!(entry.tokens.expires_at, Some(2_000_000_000));
    assert_eq!(entry.created_at, 100);
    assert!(!entry.needs_reauth);

    // The secret columns are ciphertext at rest.
    let row = store
        .get_vault_entry("support", "entra:alice")
        .await
        .unwrap()
        .unwrap();
    assert!(!row.access_token.windows(4).any(|w| w == b"at-1"));
    assert!(!row.refresh_token.unwrap().windows(4).any(|w| w == b"rt-1"));

    // Another app's entry for the same user is separate.
    let (other_app, ..) = ids("sales", "entra:alice");
    assert!(vault.load(&other_app, &user).await.unwrap().is_none());

    // An entry without the IdP's sub (stored before back-channel logout)
    // gets it from its user id, once, for a provider whose ids are the sub.
    assert_eq!(row.idp_sub, None);
    assert_eq!(store.backfill_idp_sub("entra").await.unwrap(), 1);
    let row = store
        .get_vault_entry("support", "entra:alice")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.idp_sub.as_deref(), Some("alice"));
    assert_eq!(store.backfill_idp_sub("entra").await.unwrap(), 0);
    assert_eq!(store.backfill_idp_sub("okta").await.unwrap(), 0);

    // A sign-out deletes it, and a new entry is a new sign-in generation.
    let first = entry.generation.clone().expect("a generation");
    assert!(vault.delete(&app, &user, None).await.unwrap().entry);
    assert!(!vault.delete(&app, &user, None).await.unwrap().entry);
    assert!(vault.load(&app, &user).await.unwrap().is_none());
    vault
        .save(&app, &user, &provider, &tokens("at-2", Some("rt-2")), 200)
        .await
        .unwrap();
    let again = vault.load(&app, &user).await.unwrap().unwrap();
    assert_ne!(again.generation.as_deref(), Some(first.as_str()));
}

async fn a_new_sign_in_replaces_tokens_but_keeps_an_omitted_refresh_token(db: &TestDb) {
    let store = db.store().await;
    let (keys, _) = ring(&["k1"]);
    let vault = Vault::new(store.clone(), keys);
    let (app, user, provider) = ids("support", "entra:alice");
    vault
        .save(&app, &user, &provider, &tokens("at-1", Some("rt-1")), 100)
        .await
        .unwrap();
    vault
        .save(&app, &user, &provider, &tokens("at-2", None), 200)
        .await
        .unwrap();
    let entry = vault.load(&app, &user).await.unwrap().unwrap();
    assert_eq!(entry.tokens.access_token.expose_secret(), "at-2");
    assert_eq!(
        entry.tokens.refresh_token.as_ref().unwrap().expose_secret(),
        "rt-1"
    );
    assert_eq!((entry.created_at, entry.updated_at), (100, 200));
    vault
        .save(&app, &user, &provider, &tokens("at-3", Some("rt-3")), 300)
        .await
        .unwrap();
    let entry = vault.load(&app, &user).await.unwrap().unwrap();
    assert_eq!(
        entry.tokens.refresh_token.as_ref().unwrap().expose_secret(),
        "rt-3"
    );
    assert!(entry.row_version >= 3);
}

async fn a_ciphertext_copied_to_another_row_does_not_decrypt(db: &TestDb) {
    let store = db.store().await;
    let (keys, _) = ring(&["k1"]);
    let vault = Vault::new(store.clone(), keys);
    let (app, alice, provider) = ids("support", "entra:alice");
    let (_, mallory, _) = ids("support", "entra:mallory");
    vault
        .save(
            &app,
            &alice,
            &provider,
            &tokens("alice-at", Some("alice-rt")),
            1,
        )
        .await
        .unwrap();
    vault
        .save(
            &app,
            &mallory,
            &provider,
            &tokens("mallory-at", Some("mallory-rt")),
            1,
        )
        .await
        .unwrap();
    // An attacker with write access to the table swaps Alice's ciphertext into
    // Mallory's row, hoping a bot will hand it out as Mallory's token.
    copy_access_token(&store, "entra:alice", "entra:mallory").await;
    let err = vault.load(&app, &mallory).await.unwrap_err();
    assert!(
        matches!(
            err,
            VaultError::Crypto {
                column: "access_token",
                ..
            }
        ),
        "{err:?}"
    );
    // Alice's own row still opens.
    assert_eq!(
        vault
            .load(&app, &alice)
            .await
            .unwrap()
            .unwrap()
            .tokens
            .access_token
            .expose_secret(),
        "alice-at"
    );
}

async fn copy_access_token(store: &Store, from: &str, to: &str) {
    const SQL: &str = "UPDATE vault_entries SET access_token = \
        (SELECT access_token FROM vault_entries WHERE user_id = $1) WHERE user_id = $2";
    match store {
        Store::Sqlite(pool) => {
            sqlx::query(SQL)
                .bind(from)
                .bind(to)
                .execute(pool)
                .await
                .unwrap();
        }
        Store::Postgres(pool) => {
            sqlx::query(SQL)
                .bind(from)
                .bind(to)
                .execute(pool)
                .await
                .unwrap();
        }
    }
}

async fn rekey_moves_every_entry_and_resumes_after_an_interruption(db: &TestDb) {
    let store = db.store().await;
    let (_, old_keys) = ring(&["old"]);
    let old_vault = Vault::new(store.clone(), ring_from(&old_keys));
    for i in 0..5 {
        let (app, user, provider) = ids("support", &format!("entra:user{i}"));
        let refresh = (i % 2 == 0).then_some("rt");
        old_vault
            .save(
                &app,
                &user,
                &provider,
                &tokens(&format!("at-{i}"), refresh),
                1,
            )
            .await
            .unwrap();
    }
    // The operator adds a new key in front of the old one.
    let mut rotated = vec![(KeyId::parse("new").unwrap(), VaultKeyRing::generate_key())];
    rotated.extend(old_keys.iter().cloned());
    let vault = Vault::new(store.clone(), ring_from(&rotated));

    // First run is interrupted after one batch of two.
    let first = vault
        .rekey(2, 10, |_| ControlFlow::Break(()))
        .await
        .unwrap();
    assert_eq!((first.scanned, first.moved, first.current), (2, 2, 0));

    // The second run finishes the job and skips what the first one did.
    let second = vault
        .rekey(2, 10, |_| ControlFlow::Continue(()))
        .await
        .unwrap();
    assert_eq!((second.scanned, second.moved, second.current), (5, 3, 2));
    assert!(second.failed.is_empty());

    // A third run has nothing to do.
    let third = vault
        .rekey(100, 10, |_| ControlFlow::Continue(()))
        .await
        .unwrap();
    assert_eq!((third.moved, third.current), (0, 5));

    // Every entry now opens with the new key alone, with the same plaintext.
    let new_only = Vault::new(store.clone(), ring_from(&rotated[..1]));
    for i in 0..5 {
        let (app, user, _) = ids("support", &format!("entra:user{i}"));
        let entry = new_only.load(&app, &user).await.unwrap().unwrap();
        assert_eq!(entry.tokens.access_token.expose_secret(), format!("at-{i}"));
        assert_eq!(entry.tokens.refresh_token.is_some(), i % 2 == 0);
    }
    // ... and the old ring alone can no longer open them.
    let (app, user, _) = ids("support", "entra:user0");
    let err = old_vault.load(&app, &user).await.unwrap_err();
    assert!(err.to_string().contains("\"new\""), "{err}");
}

async fn rekey_reports_entries_it_cannot_open_and_carries_on(db: &TestDb) {
    let store = db.store().await;
    let (lost, _) = ring(&["lost"]);
    let (app, user, provider) = ids("support", "entra:orphan");
    Vault::new(store.clone(), lost)
        .save(&app, &user, &provider, &tokens("x", None), 1)
        .await
        .unwrap();
    let (keys, _) = ring(&["k1"]);
    let vault = Vault::new(store.clone(), keys);
    let (app2, user2, _) = ids("support", "entra:zed");
    vault
        .save(&app2, &user2, &provider, &tokens("y", None), 1)
        .await
        .unwrap();
    let report = vault
        .rekey(10, 2, |_| ControlFlow::Continue(()))
        .await
        .unwrap();
    assert_eq!(report.scanned, 2);
    assert_eq!(report.current, 1);
    assert_eq!(report.failed.len(), 1);
    assert!(
        report.failed[0].2.contains("\"lost\""),
        "{:?}",
        report.failed
    );
}

async fn rekey_never_overwrites_a_row_written_meanwhile(db: &TestDb) {
    let store = db.store().await;
    let (_, old_keys) = ring(&["old"]);
    let (app, user, provider) = ids("support", "entra:alice");
    Vault::new(store.clone(), ring_from(&old_keys))
        .save(&app, &user, &provider, &tokens("at-old", Some("rt-old")), 1)
        .await
        .unwrap();
    let mut rotated = vec![(KeyId::parse("new").unwrap(), VaultKeyRing::generate_key())];
    rotated.extend(old_keys.iter().cloned());
    let vault = Vault::new(store.clone(), ring_from(&rotated));
    // Read the row as rekey would, then let a sign-in rotate the tokens before
    // rekey writes.
    let stale = store.vault_entries_after(None, 10).await.unwrap();
    vault
        .save(&app, &user, &provider, &tokens("at-new", Some("rt-new")), 2)
        .await
        .unwrap();
    let resealed: Vec<_> = stale
        .iter()
        .map(|row| chatgate::store::Resealed {
            pending_id_token: None,
            id_token: None,
            app: row.app.clone(),
            user_id: row.user_id.clone(),
            row_version: row.row_version,
            access_token: row.access_token.clone(),
            refresh_token: row.refresh_token.clone(),
        })
        .collect();
    assert_eq!(store.write_resealed(&resealed, 3).await.unwrap(), 0);
    let entry = vault.load(&app, &user).await.unwrap().unwrap();
    assert_eq!(
        entry.tokens.refresh_token.unwrap().expose_secret(),
        "rt-new"
    );
}

/// Runs `n` copies of a task at once; how many answered `true`.
async fn successes<F>(n: usize, task: impl Fn() -> F) -> usize
where
    F: std::future::Future<Output = bool> + Send + 'static,
{
    let handles: Vec<_> = (0..n).map(|_| tokio::spawn(task())).collect();
    let mut count = 0;
    for h in handles {
        count += usize::from(h.await.unwrap());
    }
    count
}

fn ticket(hash: &str, expires_at: i64) -> chatgate::store::NewTicket<'_> {
    chatgate::store::NewTicket {
        ticket_hash: hash,
        app: "support",
        origin: "https://o",
        user_id: Some("u:1"),
        binding_hash: None,
        signin: b"{}",
        expires_at,
    }
}

fn flow<'a>(state: &'a str, binding: &'a str, expires_at: i64) -> NewFlow<'a> {
    NewFlow {
        state_hash: state,
        binding_hash: binding,
        app: "support",
        provider: "entra",
        origin: "https://www.contoso.com",
        mode: "silent",
        dpop_jkt: None,
        ticket_hash: None,
        nonce: vec![1, 2, 3],
        pkce_verifier: vec![4, 5, 6],
        created_at: 100,
        expires_at,
    }
}

async fn a_pending_flow_is_consumed_once_and_only_by_its_browser(db: &TestDb) {
    let store = db.store().await;
    store.insert_flow(flow("s1", "b1", 700)).await.unwrap();
    // Another browser (other binding) can neither use nor burn it.
    assert!(store.take_flow("s1", "b-other").await.unwrap().is_none());
    let row = store.take_flow("s1", "b1").await.unwrap().unwrap();
    assert_eq!(row.origin, "https://www.contoso.com");
    assert_eq!(row.pkce_verifier, vec![4, 5, 6]);
    // Single use.
    assert!(store.take_flow("s1", "b1").await.unwrap().is_none());
    // A duplicate state is refused by the primary key.
    store.insert_flow(flow("s2", "b2", 700)).await.unwrap();
    assert!(store.insert_flow(flow("s2", "b2", 700)).await.is_err());
}

async fn concurrent_callbacks_consume_a_flow_exactly_once(db: &TestDb) {
    let store = db.store().await;
    store.insert_flow(flow("race", "b", 700)).await.unwrap();
    let winners = successes(16, || {
        let store = store.clone();
        async move { store.take_flow("race", "b").await.unwrap().is_some() }
    })
    .await;
    assert_eq!(winners, 1);
}

/// A key binding of `jkt` (pending under `pending_jti`, or confirmed when empty).
fn key_binding(jkt: &str, pending_jti: &str, idle_expires_at: i64) -> KeyBindingRow {
    KeyBindingRow {
        app: "support".into(),
        jkt: jkt.into(),
        pending_jti: pending_jti.into(),
        origin: "https://o".into(),
        user_id: format!("entra:{jkt}"),
        provider: "entra".into(),
        idp_sub: Some(jkt.into()),
        idp_sid: None,
        signin: "{}".into(),
        signed_in_at: 10,
        idle_expires_at,
    }
}

async fn expired_rows_are_swept_in_bounded_batches(db: &TestDb) {
    let store = db.store().await;
    // 2 500 expired rows in every table an anonymous client can grow, and
    // live ones beside them.
    const OLD: usize = 2500;
    for i in 0..OLD {
        let name = format!("old-{i}");
        store.insert_flow(flow(&name, "b", 50)).await.unwrap();
        store
            .insert_session_ticket(ticket(&name, 50))
            .await
            .unwrap();
        store.remember_jti("support", &name, 50).await.unwrap();
        store
            .insert_session(&name, b"{}", 50, &[session_user(&name)])
            .await
            .unwrap();
        store
            .insert_idp_signout(&name, &idp_signout(), 50)
            .await
            .unwrap();
        store
            .put_key_binding(&key_binding(&name, &name, 50))
            .await
            .unwrap();
    }
    let audit: Vec<(AuditEvent<'_>, i64, i64)> = (0..OLD)
        .map(|_| {
            (
                AuditEvent {
                    actor: "user",
                    app: None,
                    user_id: None,
                    action: AuditAction::SignIn,
                    outcome: AuditOutcome::Failed,
                    detail: None,
                },
                10,
                1,
            )
        })
        .collect();
    store.record_audit_batch(&audit).await.unwrap();
    store.insert_flow(flow("fresh", "b", 500)).await.unwrap();
    store
        .insert_session_ticket(ticket("fresh", 500))
        .await
        .unwrap();
    assert!(store.remember_jti("support", "fresh", 500).await.unwrap());
    store
        .insert_session("fresh", b"{}", 500, &[session_user("fresh")])
        .await
        .unwrap();
    store
        .insert_idp_signout("fresh", &idp_signout(), 500)
        .await
        .unwrap();
    store
        .put_key_binding(&key_binding("fresh", "", 500))
        .await
        .unwrap();
    store
        .record_audit(
            AuditEvent {
                actor: "user",
                app: None,
                user_id: None,
                action: AuditAction::SignIn,
                outcome: AuditOutcome::Ok,
                detail: None,
            },
            90,
        )
        .await
        .unwrap();

    // One batch deletes at most its size.
    assert_eq!(
        store
            .sweep_batch(chatgate::store::Table::PendingFlows, 100, 1000)
            .await
            .unwrap(),
        1000
    );
    let swept = store.sweep(100, 50, 1000).await.unwrap();
    for (table, n) in &swept.rows {
        let expected = match table {
            chatgate::store::Table::PendingFlows => OLD - 1000,
            // Kept a week after delivery: none is that old here.
            chatgate::store::Table::EventOutbox => 0,
            _ => OLD,
        };
        assert_eq!(*n as usize, expected, "{}", table.name());
    }
    // A swept session takes who it was signed in as along.
    assert!(store.session_users("old-1").await.unwrap().is_empty());
    assert_eq!(store.session_users("fresh").await.unwrap().len(), 1);
    assert_eq!(store.sweep(100, 50, 1000).await.unwrap().total(), 0);
    // The live rows are all there.
    assert!(store.take_flow("old-1", "b").await.unwrap().is_none());
    assert!(store.take_flow("fresh", "b").await.unwrap().is_some());
    assert!(!store.remember_jti("support", "fresh", 500).await.unwrap());
    assert!(store.load_session("fresh", 100).await.unwrap().is_some());
    assert!(
        store
            .key_binding("support", "fresh", "", 100)
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .take_session_ticket("fresh", "support", "https://o", 100)
            .await
            .unwrap()
            .is_some()
    );
    let left = store
        .list_audit(&AuditFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(left.len(), 1, "only the event younger than the retention");
}

fn session_user(name: &str) -> chatgate::store::SessionUser {
    chatgate::store::SessionUser {
        app: "support".into(),
        user_id: format!("idp:{name}"),
        provider: "idp".into(),
        idp_sub: Some(name.into()),
        idp_sid: None,
    }
}

fn idp_signout() -> chatgate::store::IdpSignoutRow {
    chatgate::store::IdpSignoutRow {
        app: "support".into(),
        origin: "https://o".into(),
        provider: "idp".into(),
        id_token: None,
    }
}

async fn a_jti_is_accepted_once_even_under_concurrency(db: &TestDb) {
    let store = db.store().await;
    assert!(store.remember_jti("support", "j1", 1000).await.unwrap());
    assert!(!store.remember_jti("support", "j1", 1000).await.unwrap());
    // The same jti for another app is another token.
    assert!(store.remember_jti("sales", "j1", 1000).await.unwrap());
    let firsts = successes(16, || {
        let store = store.clone();
        async move { store.remember_jti("support", "j-race", 1000).await.unwrap() }
    })
    .await;
    assert_eq!(firsts, 1);
}

fn cred(hash: &[u8]) -> chatgate::store::BotCredential<'_> {
    chatgate::store::BotCredential {
        secret_hash: hash,
        hash_format: "hmac",
        key_id: "k1",
        mac: &[1; 32],
    }
}

async fn bots_are_stored_by_hash_and_revocable(db: &TestDb) {
    let store = db.store().await;
    store
        .insert_bot("bot-1", "support", "helpdesk", cred(&[9; 32]), 10)
        .await
        .unwrap();
    store
        .insert_bot("bot-2", "sales", "crm", cred(&[8; 32]), 11)
        .await
        .unwrap();
    let found = store
        .find_bots_by_secret_hash(&[vec![9; 32]])
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        (found.id.as_str(), found.app.as_str(), found.revoked_at),
        ("bot-1", "support", None)
    );
    assert!(
        store
            .find_bots_by_secret_hash(&[vec![7; 32]])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.list_bots().await.unwrap().len(), 2);
    assert!(store.revoke_bot("bot-1", 20).await.unwrap());
    assert!(!store.revoke_bot("bot-1", 21).await.unwrap());
    assert!(!store.revoke_bot("nope", 21).await.unwrap());
    assert_eq!(
        store
            .find_bots_by_secret_hash(&[vec![9; 32]])
            .await
            .unwrap()[0]
            .revoked_at,
        Some(20)
    );
    // A second bot with the same secret hash is refused.
    assert!(
        store
            .insert_bot("bot-3", "support", "dup", cred(&[8; 32]), 12)
            .await
            .is_err()
    );
}

async fn audit_events_are_listed_newest_first_and_filtered(db: &TestDb) {
    let store = db.store().await;
    let support = AppId::parse("support").unwrap();
    for (i, (actor, user, action)) in [
        ("bot:b1", "entra:alice", AuditAction::TokenRead),
        ("bot:b1", "entra:bob", AuditAction::TokenRead),
        ("user", "entra:alice", AuditAction::SignIn),
    ]
    .into_iter()
    .enumerate()
    {
        let user = UserId::parse(user).unwrap();
        store
            .record_audit(
                AuditEvent {
                    actor,
                    app: Some(&support),
                    user_id: Some(&user),
                    action,
                    outcome: AuditOutcome::Ok,
                    detail: None,
                },
                i as i64,
            )
            .await
            .unwrap();
    }
    let alice = store
        .list_audit(&AuditFilter {
            user_id: Some("entra:alice".into()),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let actions: Vec<&str> = alice.iter().map(|r| r.action.as_str()).collect();
    assert_eq!(actions, ["signin", "token.read"]);
    let bot = store
        .list_audit(&AuditFilter {
            actor: Some("bot:b1".into()),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(bot.len(), 1);
    assert_eq!(bot[0].user_id.as_deref(), Some("entra:bob"));
}

async fn audit_batches_are_written_whole(db: &TestDb) {
    let store = db.store().await;
    let users: Vec<UserId> = (0..1200)
        .map(|i| UserId::parse(format!("entra:u{i}")).unwrap())
        .collect();
    let support = AppId::parse("support").unwrap();
    let events: Vec<_> = users
        .iter()
        .enumerate()
        .map(|(i, u)| {
            (
                AuditEvent {
                    actor: "bot:b",
                    app: Some(&support),
                    user_id: Some(u),
                    action: AuditAction::TokenRead,
                    outcome: AuditOutcome::Ok,
                    detail: None,
                },
                i as i64,
                1 + i as i64 % 3,
            )
        })
        .collect();
    store.record_audit_batch(&events).await.unwrap();
    let all = store
        .list_audit(&AuditFilter {
            actor: Some("bot:b".into()),
            limit: 5000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 1200);
    assert_eq!(all[0].user_id.as_deref(), Some("entra:u1199"));
    assert_eq!(all[0].at, 1199);
    assert_eq!(
        all[0].count,
        1 + 1199 % 3,
        "a row keeps the number it stands for"
    );
}

async fn signing_key_heartbeats_keep_keys_listed(db: &TestDb) {
    let store = db.store().await;
    store
        .touch_signing_key("old", "EdDSA", "{}", "k1", &[1; 32], 100)
        .await
        .unwrap();
    store
        .touch_signing_key("new", "EdDSA", "{}", "k1", &[1; 32], 1000)
        .await
        .unwrap();
    // A late heartbeat never moves last_used_at backwards.
    store
        .touch_signing_key("new", "EdDSA", "{}", "k1", &[1; 32], 900)
        .await
        .unwrap();
    let recent: Vec<String> = store
        .signing_keys_used_since(500)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.kid)
        .collect();
    assert_eq!(recent, ["new"]);
    let all = store.signing_keys_used_since(0).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].last_used_at, 1000);
    assert_eq!(all[1].first_used_at, 100);
}

async fn migrations_are_idempotent(db: &TestDb) {
    let store = db.store().await;
    store.migrate().await.unwrap();
    store.ping().await.unwrap();
    let again = db.store().await;
    again.migrate().await.unwrap();
}

/// `token.refresh_failing` goes out once refreshes have failed for the
/// threshold, once per stretch of failures; a sign-in ends the stretch. The
/// `user.signed_in` of a first sign-in (or one after re-authentication) is
/// written with the tokens; a sign-in over usable tokens writes none. A
/// sign-in's audit row is written with its tokens either way.
async fn refresh_failures_and_sign_ins_record_their_events_once(db: &TestDb) {
    let store = db.store().await;
    let (keys, _) = ring(&["k1"]);
    let vault = Vault::new(store.clone(), keys);
    let (app, user, provider) = ids("support", "entra:alice");
    let event = |id: &str, kind: &str| chatgate::store::OutboxRow {
        id: id.into(),
        app: "support".into(),
        kind: kind.into(),
        user_id: "entra:alice".into(),
        payload: "{}".into(),
        created_at: 0,
    };
    let identity = chatgate::vault::SignInIdentity::default();
    let first = event("evt_in_1", "user.signed_in");
    let written = vault
        .save_signin(
            &app,
            &user,
            &provider,
            &tokens("at-1", Some("rt-1")),
            &identity,
            100,
            SignInRecords {
                signed_in: Some(&first),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert!(written.fresh);
    let generation = written.generation.expect("a new entry has a generation");
    let again = event("evt_in_2", "user.signed_in");
    let written = vault
        .save_signin(
            &app,
            &user,
            &provider,
            &tokens("at-2", Some("rt-2")),
            &identity,
            110,
            SignInRecords {
                signed_in: Some(&again),
                audit: Some(AuditEvent {
                    actor: "user",
                    app: Some(&app),
                    user_id: Some(&user),
                    action: AuditAction::SignIn,
                    outcome: AuditOutcome::Ok,
                    detail: Some("silent"),
                }),
            },
        )
        .await
        .unwrap();
    assert!(!written.fresh, "the user had usable tokens: no new sign-in");
    assert_eq!(
        written.generation.as_deref(),
        Some(generation.as_str()),
        "a later sign-in keeps the generation"
    );
    let failing = |n: u32| event(&format!("evt_fail_{n}"), "token.refresh_failing");
    let note = |now: i64, n: u32| {
        let (store, row) = (store.clone(), failing(n));
        async move {
            store
                .note_refresh_failure("support", "entra:alice", now, 300, Some(&row))
                .await
                .unwrap()
        }
    };
    assert!(!note(1000, 1).await);
    assert!(!note(1200, 2).await);
    assert!(note(1300, 3).await, "failing for 300 s");
    assert!(!note(1400, 4).await, "once per stretch");
    // A sign-in ends the stretch; the next one is counted from its start.
    vault
        .save_signin(
            &app,
            &user,
            &provider,
            &tokens("at-3", Some("rt-3")),
            &identity,
            1500,
            SignInRecords::default(),
        )
        .await
        .unwrap();
    assert!(!note(1600, 5).await);
    assert!(note(1900, 6).await);
    let events = store
        .list_events(chatgate::store::EventFilter {
            undelivered: false,
            limit: 100,
        })
        .await
        .unwrap();
    let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    ids.sort();
    assert_eq!(ids, ["evt_fail_3", "evt_fail_6", "evt_in_1"]);
    // The audit row goes with its sign-in's write, whether or not an event does.
    let audited = store
        .list_audit(&AuditFilter {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let audited: Vec<_> = audited
        .iter()
        .map(|r| (r.at, r.action.as_str(), r.detail.as_deref()))
        .collect();
    assert_eq!(audited, [(110, "signin", Some("silent"))]);
}

backend_tests!(
    save_many_seals_every_row_and_keeps_existing_entries,
    refresh_failures_and_sign_ins_record_their_events_once,
    vault_round_trip,
    a_new_sign_in_replaces_tokens_but_keeps_an_omitted_refresh_token,
    a_ciphertext_copied_to_another_row_does_not_decrypt,
    rekey_moves_every_entry_and_resumes_after_an_interruption,
    rekey_reports_entries_it_cannot_open_and_carries_on,
    rekey_never_overwrites_a_row_written_meanwhile,
    a_pending_flow_is_consumed_once_and_only_by_its_browser,
    concurrent_callbacks_consume_a_flow_exactly_once,
    expired_rows_are_swept_in_bounded_batches,
    a_jti_is_accepted_once_even_under_concurrency,
    bots_are_stored_by_hash_and_revocable,
    audit_events_are_listed_newest_first_and_filtered,
    signing_key_heartbeats_keep_keys_listed,
    audit_batches_are_written_whole,
    migrations_are_idempotent,
);
