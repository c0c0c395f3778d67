//! Bearer-token authentication with roles.
//!
//! A server is given a spec such as
//! `"s3cret-a=writer+subscriber,s3cret-b=reader,ops=admin"`: each entry maps
//! one token to the roles it holds, and `admin` holds every role. An empty
//! spec turns authentication off. Each gRPC service is wrapped in
//! [`Tokens::interceptor`] for the role it needs; health and reflection stay
//! open. Clients send `authorization: Bearer <token>`; [`CallCredentials`]
//! does that for our own outgoing calls.
//!
//! Tokens are secrets: they never appear in logs, errors or `Debug` output.

use std::{ffi::OsStr, fmt, marker::PhantomData, str::FromStr, sync::Arc};

use clap::{builder::TypedValueParser, error::ErrorKind};
use tonic::{
    Request, Status,
    metadata::{AsciiMetadataValue, MetadataValue},
    service::Interceptor,
};

/// The metadata key that carries the token.
const AUTHORIZATION: &str = "authorization";

/// What a token allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Sends commands (`hotel.v1.CommandService`).
    Writer,
    /// Sends queries (`hotel.v1.QueryService`).
    Reader,
    /// Follows the event log (`hotel.v1.EventStream`).
    Subscriber,
    /// Every role, plus `hotel.v1.QueryAdminService`.
    Admin,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Writer, Role::Reader, Role::Subscriber, Role::Admin];

    /// The role's name in a spec and in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Writer => "writer",
            Role::Reader => "reader",
            Role::Subscriber => "subscriber",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = UnknownRole;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let name = name.trim();
        Role::ALL
            .into_iter()
            .find(|role| role.name().eq_ignore_ascii_case(name))
            .ok_or_else(|| UnknownRole::of(name))
    }
}

/// A role name that is none of ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role {}; roles are writer, reader, subscriber and admin", .0.as_deref().map_or_else(|| "(not shown)".to_owned(), |name| format!("{name:?}")))]
pub struct UnknownRole(pub Option<String>);

impl UnknownRole {
    /// The error for `name`, shown only when it is a misspelt role (at most
    /// two edits from one): anything else may be part of a token, e.g. when
    /// a comma between two entries was mistyped.
    fn of(name: &str) -> Self {
        let misspelt = name.is_empty()
            || (name.len() <= 12
                && Role::ALL
                    .iter()
                    .any(|role| edit_distance(&name.to_ascii_lowercase(), role.name()) <= 2));
        Self(misspelt.then(|| name.to_owned()))
    }
}

/// Levenshtein distance between two short strings, by bytes.
fn edit_distance(a: &str, b: &str) -> usize {
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, a_byte) in a.bytes().enumerate() {
        let mut current = vec![i + 1];
        for (j, b_byte) in b.bytes().enumerate() {
            let substitute = previous[j] + usize::from(a_byte != b_byte);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

/// What is wrong with a token spec. Entries are named by their number
/// (from 1), never by their token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("auth token entry {entry}: expected TOKEN=ROLE[+ROLE...], found no '='")]
    MissingEquals { entry: usize },
    #[error("auth token entry {entry}: the token is empty")]
    EmptyToken { entry: usize },
    #[error(
        "auth token entry {entry}: the token may hold only visible ASCII characters \
         other than ',', '=' and '+' (no spaces)"
    )]
    BadToken { entry: usize },
    #[error("auth token entry {entry}: no role after '='")]
    NoRole { entry: usize },
    #[error(
        "auth token entry {entry}: more than one '='; entries are separated by ',' \
         (is a comma missing?)"
    )]
    SeveralEquals { entry: usize },
    #[error(
        "the auth token spec holds no entry; leave it empty (unset) to turn \
         authentication off"
    )]
    NoEntries,
    #[error("auth token entry {entry}: {source}")]
    Role { entry: usize, source: UnknownRole },
    #[error("auth token entry {entry} repeats the token of entry {first}")]
    Duplicate { entry: usize, first: usize },
}

/// One token and the roles it holds.
#[derive(Clone)]
struct Grant {
    /// The secret, compared in constant time.
    token: Box<[u8]>,
    /// Roles named in the spec (admin implies the others when checked).
    roles: Vec<Role>,
}

impl Grant {
    fn allows(&self, role: Role) -> bool {
        self.roles.contains(&role) || self.roles.contains(&Role::Admin)
    }
}

/// The tokens a server accepts. Empty means authentication is off.
#[derive(Clone, Default)]
pub struct Tokens {
    /// Shared by every interceptor of the server.
    grants: Arc<[Grant]>,
}

impl Tokens {
    /// Parses `TOKEN=ROLE[+ROLE...][,TOKEN=ROLE...]`. Spaces around the
    /// separators and empty entries are ignored; only an empty spec is auth
    /// off, and one with no entry at all (`","`, `" "`) is refused, so a
    /// botched value never starts a server open to everyone.
    pub fn parse(spec: &str) -> Result<Self, SpecError> {
        if spec.is_empty() {
            return Ok(Self::default());
        }
        let mut grants: Vec<Grant> = Vec::new();
        // Entry number and token of each grant, to name a repeated token.
        let mut seen: Vec<(usize, &str)> = Vec::new();
        for (index, entry) in spec.split(',').enumerate() {
            let entry_number = index + 1;
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let Some((token, roles)) = entry.split_once('=') else {
                return Err(SpecError::MissingEquals {
                    entry: entry_number,
                });
            };
            let token = token.trim();
            if token.is_empty() {
                return Err(SpecError::EmptyToken {
                    entry: entry_number,
                });
            }
            if !is_token_text(token) {
                return Err(SpecError::BadToken {
                    entry: entry_number,
                });
            }
            if roles.contains('=') {
                return Err(SpecError::SeveralEquals {
                    entry: entry_number,
                });
            }
            if roles.trim().is_empty() {
                return Err(SpecError::NoRole {
                    entry: entry_number,
                });
            }
            let roles = roles
                .split('+')
                .map(Role::from_str)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| SpecError::Role {
                    entry: entry_number,
                    source,
                })?;
            if let Some(&(first, _)) = seen.iter().find(|(_, seen)| *seen == token) {
                return Err(SpecError::Duplicate {
                    entry: entry_number,
                    first,
                });
            }
            seen.push((entry_number, token));
            grants.push(Grant {
                token: token.as_bytes().into(),
                roles,
            });
        }
        if grants.is_empty() {
            return Err(SpecError::NoEntries);
        }
        Ok(Self {
            grants: grants.into(),
        })
    }

    /// True when no token is configured: every call is let through.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.grants.len()
    }

    /// An interceptor that lets a call through only with a token holding
    /// `role` (or `admin`); lets everything through when auth is off.
    pub fn interceptor(&self, role: Role) -> impl Interceptor + Clone + use<> {
        RequireRole {
            tokens: self.clone(),
            role,
        }
    }

    /// Checks the metadata of one call; counts every refusal (the handler
    /// never runs, so its own count never sees it).
    fn check(&self, role: Role, request: &Request<()>) -> Result<(), Status> {
        let checked = self.check_token(role, request);
        if let Err(status) = &checked {
            metrics::counter!(
                "grpc_auth_refused_total",
                "role" => role.name(),
                "code" => crate::server::code_name(status.code())
            )
            .increment(1);
        }
        checked
    }

    fn check_token(&self, role: Role, request: &Request<()>) -> Result<(), Status> {
        if self.is_empty() {
            return Ok(());
        }
        let Some(presented) = request
            .metadata()
            .get(AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(bearer_token)
        else {
            tracing::debug!(%role, "call refused: no bearer token");
            return Err(Status::unauthenticated(
                "missing bearer token: send the metadata 'authorization: Bearer <token>'",
            ));
        };
        // Look at every grant, so the time taken does not say which matched.
        let grant = self.grants.iter().fold(None, |found, grant| {
            if constant_time_eq(&grant.token, presented.as_bytes()) {
                Some(grant)
            } else {
                found
            }
        });
        match grant {
            None => {
                tracing::debug!(%role, "call refused: unknown bearer token");
                Err(Status::unauthenticated("unknown bearer token"))
            }
            Some(grant) if grant.allows(role) => Ok(()),
            Some(_) => {
                tracing::debug!(%role, "call refused: the token lacks the role");
                Err(Status::permission_denied(format!(
                    "this call needs the '{role}' role, which the token does not hold"
                )))
            }
        }
    }
}

impl FromStr for Tokens {
    type Err = SpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        Self::parse(spec)
    }
}

/// Shows the roles only, never a token.
impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.grants.iter().map(|grant| Redacted(&grant.roles)))
            .finish()
    }
}

/// A token's roles, printed in place of the token.
struct Redacted<'a>(&'a [Role]);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted>={:?}", self.0)
    }
}

/// The server-side check for one role, as a tonic interceptor.
#[derive(Clone)]
struct RequireRole {
    /// The tokens the server accepts.
    tokens: Tokens,
    /// The role the wrapped service needs.
    role: Role,
}

impl Interceptor for RequireRole {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.tokens.check(self.role, &request)?;
        Ok(request)
    }
}

/// The token in an `authorization` value, if it is `Bearer <token>`
/// (scheme case-insensitive, as RFC 7235 says).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Characters a token can have and still travel in a header and a spec.
fn is_token_text(token: &str) -> bool {
    token
        .bytes()
        .all(|byte| byte.is_ascii_graphic() && !matches!(byte, b',' | b'=' | b'+'))
}

/// Equality whose time depends on the lengths only, not on where the bytes
/// differ.
fn constant_time_eq(expected: &[u8], presented: &[u8]) -> bool {
    if expected.len() != presented.len() {
        return false;
    }
    expected
        .iter()
        .zip(presented)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

/// A bearer token this process sends with its own calls (the query server's
/// to the command server).
#[derive(Clone)]
pub struct BearerToken {
    /// `Bearer <token>`, ready to send, marked sensitive.
    header: AsciiMetadataValue,
}

impl FromStr for BearerToken {
    type Err = String;

    fn from_str(token: &str) -> Result<Self, Self::Err> {
        let token = token.trim();
        if token.is_empty() || !token.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err("a bearer token must be non-empty visible ASCII without spaces".to_owned());
        }
        let mut header: AsciiMetadataValue = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| "the token cannot be sent as gRPC metadata".to_owned())?;
        header.set_sensitive(true);
        Ok(Self { header })
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// A client-side interceptor adding `authorization: Bearer <token>` to
/// every call, or nothing when there is no token.
#[derive(Clone, Debug, Default)]
pub struct CallCredentials {
    /// The token to send, if any.
    token: Option<BearerToken>,
}

impl CallCredentials {
    pub fn new(token: Option<BearerToken>) -> Self {
        Self { token }
    }

    /// True when calls carry a token.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// The token itself, to hand to a child process through its
    /// environment (never its command line, which `ps` shows).
    pub fn token(&self) -> Option<&str> {
        let header = self.token.as_ref()?.header.to_str().ok()?;
        header.strip_prefix("Bearer ")
    }
}

/// An empty string is no token.
impl FromStr for CallCredentials {
    type Err = String;

    fn from_str(token: &str) -> Result<Self, Self::Err> {
        if token.trim().is_empty() {
            return Ok(Self::default());
        }
        Ok(Self::new(Some(token.parse()?)))
    }
}

/// A clap value parser for flags that hold secrets: on a bad value it says
/// what is wrong without echoing the value, as clap's own parsers would.
pub fn secret<T>() -> SecretParser<T> {
    SecretParser(PhantomData)
}

/// See [`secret`].
pub struct SecretParser<T>(PhantomData<fn() -> T>);

impl<T> Clone for SecretParser<T> {
    fn clone(&self) -> Self {
        secret()
    }
}

impl<T> TypedValueParser for SecretParser<T>
where
    T: FromStr + Clone + Send + Sync + 'static,
    T::Err: fmt::Display,
{
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        let problem = match value.to_str().map(str::parse::<T>) {
            Some(Ok(parsed)) => return Ok(parsed),
            Some(Err(error)) => error.to_string(),
            None => "it is not UTF-8".to_owned(),
        };
        let flag = arg.map_or_else(|| "the value".to_owned(), |arg| format!("'{arg}'"));
        Err(cmd.clone().error(
            ErrorKind::ValueValidation,
            format!("invalid value for {flag} (not shown: it holds secrets): {problem}"),
        ))
    }
}

impl Interceptor for CallCredentials {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert(AUTHORIZATION, token.header.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    #[test]
    fn call_credentials_hand_back_their_token_only() {
        let credentials: CallCredentials = " s3cret ".parse().expect("a token");
        assert_eq!(credentials.token(), Some("s3cret"));
        assert!(!format!("{credentials:?}").contains("s3cret"));
        let none: CallCredentials = "".parse().expect("no token");
        assert_eq!(none.token(), None);
    }

    fn call(token: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        if let Some(value) = token {
            request.metadata_mut().insert(
                AUTHORIZATION,
                value.parse().expect("a valid metadata value"),
            );
        }
        request
    }

    fn check(tokens: &Tokens, role: Role, header: Option<&str>) -> Result<(), Code> {
        let mut interceptor = tokens.interceptor(role);
        interceptor
            .call(call(header))
            .map(drop)
            .map_err(|status| status.code())
    }

    const SPEC: &str = "s3cret-a=writer+subscriber,s3cret-b=reader,ops=admin";

    #[test]
    fn parses_a_spec_with_several_roles() {
        let tokens = Tokens::parse(SPEC).expect("a valid spec");
        assert_eq!(tokens.len(), 3);
        assert!(!tokens.is_empty());
        let tokens = Tokens::parse(" a = Writer + subscriber , b=reader, ").expect("spaces");
        assert_eq!(tokens.len(), 2);
        assert_eq!(check(&tokens, Role::Subscriber, Some("Bearer a")), Ok(()));
    }

    #[test]
    fn an_empty_spec_turns_auth_off() {
        for spec in [""] {
            let tokens = Tokens::parse(spec).expect("empty is valid");
            assert!(tokens.is_empty());
            for role in Role::ALL {
                assert_eq!(check(&tokens, role, None), Ok(()));
                assert_eq!(check(&tokens, role, Some("Bearer whatever")), Ok(()));
            }
        }
    }

    #[test]
    fn bad_specs_name_the_entry_and_never_the_token() {
        let cases = [
            ("a=writer,secret-b", "entry 2", "no '='"),
            ("a=writer,=reader", "entry 2", "empty"),
            ("a=writer,b=", "entry 2", "no role"),
            ("a=writer,b=reader+", "entry 2", "unknown role \"\""),
            ("a=wrtier", "entry 1", "unknown role \"wrtier\""),
            ("sec ret=reader", "entry 1", "visible ASCII"),
            (
                "a=writer,,a=reader",
                "entry 3 repeats the token of entry 1",
                "",
            ),
        ];
        for (spec, entry, problem) in cases {
            let error = Tokens::parse(spec)
                .expect_err("an invalid spec")
                .to_string();
            assert!(error.contains(entry), "{spec:?}: {error}");
            assert!(error.contains(problem), "{spec:?}: {error}");
            for secret in ["secret-b", "sec ret"] {
                assert!(!error.contains(secret), "{spec:?}: {error}");
            }
        }
    }

    #[test]
    fn a_spec_without_entries_refuses_to_start() {
        for spec in ["  ", ",", " , ,", ",,,"] {
            let error = Tokens::parse(spec)
                .err()
                .unwrap_or_else(|| panic!("{spec:?} must not turn auth off"));
            assert_eq!(error, SpecError::NoEntries, "{spec:?}");
            assert!(error.to_string().contains("no entry"), "{error}");
        }
    }

    #[test]
    fn a_missing_comma_never_echoes_the_next_token() {
        for spec in [
            "a=writer;Second-Secret=reader",
            "a=writer Second-Secret=reader",
        ] {
            let error = Tokens::parse(spec).expect_err("a bad spec").to_string();
            assert!(error.contains("entry 1"), "{spec:?}: {error}");
            assert!(error.contains("comma missing"), "{spec:?}: {error}");
            assert!(!error.contains("Second-Secret"), "{spec:?}: {error}");
            assert!(!error.contains("Secret"), "{spec:?}: {error}");
        }
        // A role that is not a near miss may be a token: it is not shown.
        for spec in ["reader=Second-Secret", "a=writer+topsecretvalue"] {
            let error = Tokens::parse(spec).expect_err("a bad spec").to_string();
            assert!(error.contains("entry 1"), "{spec:?}: {error}");
            assert!(error.contains("(not shown)"), "{spec:?}: {error}");
            assert!(!error.to_ascii_lowercase().contains("secret"), "{error}");
        }
        // A misspelt role is shown, to help fix it.
        let error = Tokens::parse("a=subscirber")
            .expect_err("a typo")
            .to_string();
        assert!(error.contains("\"subscirber\""), "{error}");
    }

    #[test]
    fn missing_or_unknown_tokens_are_unauthenticated() {
        let tokens = Tokens::parse(SPEC).expect("a valid spec");
        for header in [
            None,
            Some("Bearer nope"),
            Some("Bearer s3cret-a2"),
            Some("Bearer s3cret-"),
            Some("Basic s3cret-a"),
            Some("Bearer"),
            Some("s3cret-a"),
        ] {
            assert_eq!(
                check(&tokens, Role::Writer, header),
                Err(Code::Unauthenticated),
                "{header:?}"
            );
        }
    }

    #[test]
    fn a_token_without_the_role_is_denied_naming_the_role() {
        let tokens = Tokens::parse(SPEC).expect("a valid spec");
        let status = tokens
            .interceptor(Role::Writer)
            .call(call(Some("Bearer s3cret-b")))
            .expect_err("a reader may not write");
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(
            status.message().contains("'writer'"),
            "{}",
            status.message()
        );
        assert!(!status.message().contains("s3cret"));
        assert_eq!(
            check(&tokens, Role::Admin, Some("Bearer s3cret-a")),
            Err(Code::PermissionDenied)
        );
    }

    #[test]
    fn roles_are_granted_and_admin_holds_all() {
        let tokens = Tokens::parse(SPEC).expect("a valid spec");
        assert_eq!(
            check(&tokens, Role::Writer, Some("Bearer s3cret-a")),
            Ok(())
        );
        assert_eq!(
            check(&tokens, Role::Subscriber, Some("bearer  s3cret-a ")),
            Ok(())
        );
        assert_eq!(
            check(&tokens, Role::Reader, Some("Bearer s3cret-b")),
            Ok(())
        );
        for role in Role::ALL {
            assert_eq!(check(&tokens, role, Some("Bearer ops")), Ok(()), "{role}");
        }
    }

    #[test]
    fn debug_output_hides_tokens() {
        let tokens = Tokens::parse(SPEC).expect("a valid spec");
        let shown = format!("{tokens:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("ops"),
            "{shown}"
        );
        assert!(shown.contains("Writer"), "{shown}");
        let token: BearerToken = "s3cret-a".parse().expect("a valid token");
        assert!(!format!("{token:?}").contains("s3cret"));
        assert!(!format!("{:?}", CallCredentials::new(Some(token))).contains("s3cret"));
    }

    #[test]
    fn call_credentials_pass_the_server_check() {
        let tokens = Tokens::parse(SPEC).expect("a valid spec");
        let token: BearerToken = "s3cret-a".parse().expect("a valid token");
        let sent = CallCredentials::new(Some(token))
            .call(Request::new(()))
            .expect("attaching never fails");
        assert!(tokens.interceptor(Role::Subscriber).call(sent).is_ok());
        let sent = CallCredentials::default()
            .call(Request::new(()))
            .expect("attaching never fails");
        assert!(sent.metadata().get(AUTHORIZATION).is_none());
        assert!("".parse::<BearerToken>().is_err());
        assert!("two words".parse::<BearerToken>().is_err());
    }

    #[test]
    fn the_flag_parser_never_echoes_the_value() {
        let cmd = clap::Command::new("server").arg(
            clap::Arg::new("auth-tokens")
                .long("auth-tokens")
                .value_parser(secret::<Tokens>()),
        );
        let error = cmd
            .clone()
            .try_get_matches_from(["server", "--auth-tokens", "topsecret=wrtier"])
            .expect_err("a bad spec")
            .to_string();
        assert!(!error.contains("topsecret"), "{error}");
        assert!(error.contains("--auth-tokens"), "{error}");
        assert!(
            error.contains("entry 1: unknown role \"wrtier\""),
            "{error}"
        );
        let matches = cmd
            .try_get_matches_from(["server", "--auth-tokens", "t=reader"])
            .expect("a good spec");
        let tokens = matches.get_one::<Tokens>("auth-tokens").expect("parsed");
        assert_eq!(tokens.len(), 1);
        assert!(!"".parse::<CallCredentials>().expect("empty").has_token());
        assert!("t".parse::<CallCredentials>().expect("a token").has_token());
        assert!("t u".parse::<CallCredentials>().is_err());
    }

    #[test]
    fn constant_time_eq_compares_whole_slices() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
