//! Who may call what: bearer tokens with roles, kept only as SHA-256 hashes, and a rate limit
//! per token (or, for requests without a valid one, per client address).

use std::num::NonZeroU32;

use actix_web::HttpRequest;
use actix_web::http::header;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::ApiError;

/// Environment variable with extra tokens: `role+role:token,...` (e.g.
/// `read:s3cret,read+ingest:other`), hashed as they are read.
pub const TOKENS_ENV: &str = "CALLPULSE_API_TOKENS";

/// What a token may do.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The API (`/api/*`) and the live view.
    Read,
    /// `POST /records`.
    Ingest,
}

impl Role {
    /// The name used in config (`read`, `ingest`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Ingest => "ingest",
        }
    }
}

/// One `[[api.tokens]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it (shown in logs instead of the token).
    pub name: String,
    /// SHA-256 of the token, 64 hex digits.
    pub sha256: String,
    /// What it may do.
    pub roles: Vec<Role>,
}

/// The `[api]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Tokens and their roles (see also [`TOKENS_ENV`]). With none, `/api/*` refuses every
    /// request and `POST /records` needs no token.
    pub tokens: Vec<TokenConfig>,
    /// Requests per second allowed to one token (or one client address without a token).
    pub requests_per_second: u32,
    /// Requests allowed at once above that rate.
    pub burst: u32,
    /// Origins allowed to call the API from a browser (CORS); none by default.
    pub cors_origins: Vec<String>,
    /// How often the live feed looks for new events, ms.
    pub live_poll_ms: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            tokens: Vec::new(),
            requests_per_second: 20,
            burst: 100,
            cors_origins: Vec::new(),
            live_poll_ms: 200,
        }
    }
}

/// The SHA-256 of `token`, as lower-case hex.
pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A new random token (`cp_` and 64 hex digits).
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("cp_{}", hex::encode(bytes))
}

struct Known {
    name: String,
    hash: [u8; 32],
    roles: Vec<Role>,
}

/// The tokens and the rate limiter.
pub struct Auth {
    known: Vec<Known>,
    limiter: DefaultKeyedRateLimiter<String>,
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out).ok()?;
    Some(out)
}

/// Whether two hashes are equal, looking at every byte whatever the first difference.
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Auth {
    /// The tokens of `config` and of `env` (the value of [`TOKENS_ENV`], if set); a hash
    /// that is not 64 hex digits, an unknown role or an entry without a token is refused.
    pub fn new(config: &ApiConfig, env: Option<&str>) -> anyhow::Result<Self> {
        let mut known = Vec::new();
        for token in &config.tokens {
            let hash = parse_hash(&token.sha256).ok_or_else(|| {
                anyhow::anyhow!(
                    "[[api.tokens]] {:?}: sha256 must be 64 hex digits (`callpulse api token` makes one)",
                    token.name
                )
            })?;
            known.push(Known {
                name: token.name.clone(),
                hash,
                roles: token.roles.clone(),
            });
        }
        for (i, entry) in env.unwrap_or("").split(',').enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let (roles, token) = entry
                .split_once(':')
                .filter(|(_, token)| !token.is_empty())
                .ok_or_else(|| {
                    anyhow::anyhow!("{TOKENS_ENV} entry {}: expected role+role:token", i + 1)
                })?;
            let roles = roles
                .split('+')
                .map(|r| {
                    <Role as clap::ValueEnum>::from_str(r.trim(), false).map_err(|_| {
                        anyhow::anyhow!(
                            "{TOKENS_ENV} entry {}: unknown role {r:?} (read, ingest)",
                            i + 1
                        )
                    })
                })
                .collect::<anyhow::Result<_>>()?;
            let hash = parse_hash(&token_hash(token)).expect("a SHA-256 is 64 hex digits");
            known.push(Known {
                name: format!("env-{}", i + 1),
                hash,
                roles,
            });
        }
        let per_second = NonZeroU32::new(config.requests_per_second.max(1)).expect("at least 1");
        let burst = NonZeroU32::new(config.burst.max(1)).expect("at least 1");
        Ok(Self {
            known,
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
        })
    }

    /// Whether any token is known; without one, `POST /records` is open and `/api/*` shut.
    pub fn has_tokens(&self) -> bool {
        !self.known.is_empty()
    }

    /// Lets `request` through when it carries a token with `role` and is within its rate;
    /// the answer says why not otherwise. Returns the token's name.
    pub fn check(&self, request: &HttpRequest, role: Role) -> Result<String, ApiError> {
        let bearer = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let holder = bearer.and_then(|token| {
            let hash = parse_hash(&token_hash(token)).expect("a SHA-256 is 64 hex digits");
            self.known.iter().find(|k| same(&k.hash, &hash))
        });
        let key = match holder {
            Some(known) => format!("token:{}", known.name),
            None => format!(
                "addr:{}",
                request
                    .peer_addr()
                    .map_or_else(|| "unknown".into(), |a| a.ip().to_string())
            ),
        };
        self.limit(&key)?;
        let Some(known) = holder else {
            return Err(if !self.has_tokens() {
                ApiError::Unauthorized(
                    "no API tokens are configured: add [[api.tokens]] or set CALLPULSE_API_TOKENS"
                        .into(),
                )
            } else if bearer.is_none() {
                ApiError::Unauthorized("an Authorization: Bearer token is required".into())
            } else {
                ApiError::Unauthorized("unknown token".into())
            });
        };
        if !known.roles.contains(&role) {
            return Err(ApiError::Forbidden(format!(
                "token {:?} lacks the {} role",
                known.name,
                role.as_str()
            )));
        }
        Ok(known.name.clone())
    }

    fn limit(&self, key: &String) -> Result<(), ApiError> {
        if self.limiter.len() > 10_000 {
            self.limiter.retain_recent();
        }
        self.limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(
                &governor::clock::DefaultClock::default(),
            ));
            ApiError::TooManyRequests(wait.as_secs().max(1))
        })
    }
}
