//! JWT settings shared by `converge serve` and `converge token`, and `converge token` itself.
//!
//! Where the HS256 secret comes from, first match wins: `--jwt-secret` / CONVERGE_JWT_SECRET;
//! else the file `<data>/jwt-secret`. `serve` creates that file (32 random bytes, hex, mode
//! 0600) when nothing else is configured, so a fresh server is never open to anyone.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use converge_server::auth::{AuthConfig, JwtConfig, JwtKey, claims, mint_hs256};

const SECRET_FILE: &str = "jwt-secret";

/// JWT options.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct JwtArgs {
    /// HS256 shared secret (at least 16 bytes).
    #[arg(long, env = "CONVERGE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// A PEM public key: tokens are then checked with it (see --jwt-alg) instead of a secret.
    #[arg(long, env = "CONVERGE_JWT_PUBLIC_KEY")]
    jwt_public_key: Option<PathBuf>,
    /// The public key's algorithm.
    #[arg(long, env = "CONVERGE_JWT_ALG", default_value = "eddsa", value_parser = ["eddsa", "rs256"])]
    jwt_alg: String,
    /// Required `aud` claim.
    #[arg(long, env = "CONVERGE_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Required `iss` claim.
    #[arg(long, env = "CONVERGE_JWT_ISSUER")]
    jwt_issuer: Option<String>,
}

/// Where the secret came from.
pub(crate) enum Secret {
    Given(Vec<u8>),
    File(PathBuf, Vec<u8>),
    Created(PathBuf, Vec<u8>),
}

impl Secret {
    fn bytes(&self) -> &[u8] {
        match self {
            Secret::Given(b) | Secret::File(_, b) | Secret::Created(_, b) => b,
        }
    }
}

fn secret(args: &JwtArgs, data: &Path, create: bool) -> anyhow::Result<Secret> {
    if let Some(s) = &args.jwt_secret {
        return Ok(Secret::Given(s.as_bytes().to_vec()));
    }
    let path = data.join(SECRET_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let trimmed = String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec();
            return Ok(Secret::File(path, trimmed));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    if !create {
        bail!(
            "no JWT secret: pass --jwt-secret (or CONVERGE_JWT_SECRET), or --data the server's directory ({} not found)",
            path.display()
        );
    }
    std::fs::create_dir_all(data).with_context(|| format!("creating {}", data.display()))?;
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(hex.as_bytes())?;
    file.sync_all()?;
    Ok(Secret::Created(path, hex.into_bytes()))
}

/// The server's auth configuration; prints where a created secret is and how to mint tokens.
pub(crate) fn server_auth(args: &JwtArgs, data: &Path) -> anyhow::Result<AuthConfig> {
    let key = match &args.jwt_public_key {
        Some(pem) => {
            let bytes = std::fs::read(pem).with_context(|| format!("reading {}", pem.display()))?;
            match args.jwt_alg.as_str() {
                "rs256" => JwtKey::Rs256(bytes),
                _ => JwtKey::EdDsa(bytes),
            }
        }
        None => {
            let s = secret(args, data, true)?;
            if let Secret::File(path, _) = &s {
                tracing::info!(path = %path.display(), "JWT secret read from the data directory");
            }
            if let Secret::Created(path, _) = &s {
                println!(
                    "no JWT secret was configured: created {} (mode 0600). Mint a token with:\n  converge token --data {} --user alice --role editor",
                    path.display(),
                    data.display()
                );
            }
            JwtKey::Hs256(s.bytes().to_vec())
        }
    };
    Ok(AuthConfig::Jwt(JwtConfig {
        key,
        audience: args.jwt_audience.clone(),
        issuer: args.jwt_issuer.clone(),
        leeway_secs: 30,
    }))
}

/// `converge token`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct TokenArgs {
    /// The user id (`sub`).
    #[arg(long)]
    user: String,
    /// A role (repeat for several): admin, editor, viewer, or one from the configuration.
    #[arg(long = "role", default_value = "editor")]
    roles: Vec<String>,
    /// How long the token is valid: 90s, 30m, 1h, 7d, or seconds.
    #[arg(long, default_value = "1h")]
    ttl: String,
    /// A per-document grant, DOC=ROLE (repeat for several).
    #[arg(long = "doc")]
    docs: Vec<String>,
    #[command(flatten)]
    data: crate::DataDir,
    #[command(flatten)]
    jwt: JwtArgs,
}

fn ttl_secs(s: &str) -> anyhow::Result<u64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .with_context(|| format!("--ttl {s:?}: a number first"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => bail!("--ttl {s:?}: unknown unit {other:?} (s, m, h, d)"),
    };
    Ok(n.saturating_mul(mult))
}

pub(crate) fn run(args: TokenArgs) -> anyhow::Result<ExitCode> {
    if args.jwt.jwt_public_key.is_some() {
        bail!(
            "converge token signs with the HS256 secret; with a public key, tokens come from your identity provider"
        );
    }
    let secret = secret(&args.jwt, &args.data.data, false)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let roles: Vec<&str> = args.roles.iter().map(String::as_str).collect();
    let mut c = claims(&args.user, &roles, now, ttl_secs(&args.ttl)?);
    c.aud = args.jwt.jwt_audience.clone();
    c.iss = args.jwt.jwt_issuer.clone();
    for grant in &args.docs {
        let Some((doc, role)) = grant.split_once('=') else {
            bail!("--doc {grant:?}: expected DOC=ROLE");
        };
        doc.parse::<converge_proto::DocId>()
            .map_err(|e| anyhow::anyhow!("--doc {grant:?}: {e}"))?;
        c.docs.insert(doc.to_string(), role.to_string());
    }
    let token = mint_hs256(secret.bytes(), &c)?;
    // The token is the last line, so scripts can take it with `tail -1`.
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}
