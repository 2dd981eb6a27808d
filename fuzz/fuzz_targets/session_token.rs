//! Session tokens (`X-Amz-Security-Token` of credentials from ccstream's STS): any text is
//! refused without a panic; a token issued for any caller opens to that caller until it
//! expires; a token changed anywhere is refused; and whatever an authentic token holds (sealed
//! by this key, any bytes) opens or is refused, never panics.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use arbitrary::Arbitrary;
use ccstream::auth::seal::MasterKey;
use ccstream::auth::session::{issue, open, seal_token, SessionError};
use ccstream::auth::{Caller, Role};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Input {
    text: String,
    user: String,
    domain: String,
    read_write: bool,
    lifetime: u32,
    issued_at: u32,
    flip: (u16, u8),
    plaintext: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let master = MasterKey::from_base64("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=")
        .expect("a 32-byte key");
    let now = UNIX_EPOCH + Duration::from_secs(1_000_000_000 + u64::from(input.issued_at));

    assert_eq!(
        open(&master, &input.text, now).map(|_| ()),
        Err(SessionError::Invalid)
    );

    let caller = Caller {
        user: input.user,
        role: if input.read_write {
            Role::ReadWrite
        } else {
            Role::Read
        },
        domain: input.domain,
    };
    let lifetime = Duration::from_secs(u64::from(input.lifetime));
    let issued = issue(&master, &caller, lifetime, now).expect("issue");
    match open(&master, &issued.session_token, now) {
        Ok(session) => {
            assert!(lifetime > Duration::ZERO);
            assert_eq!(session.caller, caller);
            assert_eq!(session.access_key_id, issued.access_key_id);
            assert_eq!(session.secret, issued.secret_access_key);
            assert_eq!(session.expires, issued.expires);
        }
        Err(e) => assert!(
            lifetime == Duration::ZERO && e == SessionError::Expired,
            "{e:?}"
        ),
    }
    let after = now + lifetime;
    assert_eq!(
        open(&master, &issued.session_token, after).map(|_| ()),
        Err(SessionError::Expired)
    );

    let mut token = issued.session_token.clone().into_bytes();
    let i = usize::from(input.flip.0) % token.len();
    let replacement = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_ ="
        [usize::from(input.flip.1) % 66];
    if token[i] != replacement {
        token[i] = replacement;
        let token = String::from_utf8(token).expect("ASCII");
        assert_eq!(
            open(&master, &token, now).map(|_| ()),
            Err(SessionError::Invalid),
            "a changed token opened: {token}"
        );
    }

    let sealed = seal_token(&master, &input.plaintext).expect("seal");
    if let Ok(session) = open(&master, &sealed, now) {
        assert!(session.expires > 1_000_000_000 + u64::from(input.issued_at));
    }
});
