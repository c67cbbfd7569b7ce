//! Roles and permissions: what an identity may do in a document.
//!
//! A role names a set of [`Permission`]s (configuration; the defaults are DESIGN.md's: admin
//! everything, editor everything but admin, viewer read and presence). What a user may do in a
//! document is the union of what their token's roles give, what the token grants for that
//! document, and what the server-side ACL (set by admins, [`Acl`]) gives them there. It is
//! looked up for every request, so an ACL change applies to live sessions at once.

use std::collections::BTreeMap;
use std::fmt;

use converge_proto::{DocId, UserId};

use crate::auth::Identity;

/// One thing a peer may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Permission {
    /// Subscribe and receive the document.
    Read,
    /// Push CRDT changes.
    Write,
    /// Run mutators.
    Mutate,
    /// Take locks.
    Lock,
    /// Set presence.
    Presence,
    /// Publish events to rooms.
    Publish,
    /// Operator actions (the HTTP API's admin endpoints, ACLs).
    Admin,
}

impl Permission {
    pub const ALL: [Permission; 7] = [
        Permission::Read,
        Permission::Write,
        Permission::Mutate,
        Permission::Lock,
        Permission::Presence,
        Permission::Publish,
        Permission::Admin,
    ];

    /// The name in configuration and error messages.
    pub const fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::Mutate => "mutate",
            Permission::Lock => "lock",
            Permission::Presence => "presence",
            Permission::Publish => "publish",
            Permission::Admin => "admin",
        }
    }

    pub fn parse(name: &str) -> Option<Permission> {
        Permission::ALL.into_iter().find(|p| p.name() == name)
    }

    const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of permissions.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Permissions(u8);

impl Permissions {
    pub const NONE: Permissions = Permissions(0);
    pub const ALL: Permissions = Permissions(0x7f);

    pub fn of(perms: &[Permission]) -> Self {
        Permissions(perms.iter().fold(0, |acc, p| acc | p.bit()))
    }

    pub fn has(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }

    pub fn union(self, other: Permissions) -> Self {
        Permissions(self.0 | other.0)
    }

    pub fn without(self, p: Permission) -> Self {
        Permissions(self.0 & !p.bit())
    }
}

impl fmt::Debug for Permissions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(
                Permission::ALL
                    .iter()
                    .filter(|p| self.has(**p))
                    .map(|p| p.name()),
            )
            .finish()
    }
}

/// Role name -> permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roles {
    by_name: BTreeMap<String, Permissions>,
}

impl Default for Roles {
    /// admin: everything; editor: everything but admin; viewer: read and presence.
    fn default() -> Self {
        let mut by_name = BTreeMap::new();
        by_name.insert("admin".to_string(), Permissions::ALL);
        by_name.insert(
            "editor".to_string(),
            Permissions::ALL.without(Permission::Admin),
        );
        by_name.insert(
            "viewer".to_string(),
            Permissions::of(&[Permission::Read, Permission::Presence]),
        );
        Roles { by_name }
    }
}

impl Roles {
    /// Defines (or redefines) a role.
    pub fn set(&mut self, role: impl Into<String>, perms: Permissions) -> &mut Self {
        self.by_name.insert(role.into(), perms);
        self
    }

    /// What a role gives (an unknown role gives nothing).
    pub fn of(&self, role: &str) -> Permissions {
        self.by_name.get(role).copied().unwrap_or_default()
    }
}

/// Server-side per-document grants, set by admins: (document, user) -> role.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    by_doc: BTreeMap<DocId, BTreeMap<UserId, String>>,
}

impl Acl {
    /// Grants `role` to `user` in `doc` (`None`: removes the grant).
    pub fn set(&mut self, doc: DocId, user: UserId, role: Option<String>) {
        match role {
            Some(r) => {
                self.by_doc.entry(doc).or_default().insert(user, r);
            }
            None => {
                if let Some(m) = self.by_doc.get_mut(&doc) {
                    m.remove(&user);
                    if m.is_empty() {
                        self.by_doc.remove(&doc);
                    }
                }
            }
        }
    }

    /// The grants of one document, by user.
    pub fn of_doc(&self, doc: &DocId) -> Vec<(UserId, String)> {
        self.by_doc
            .get(doc)
            .map(|m| m.iter().map(|(u, r)| (u.clone(), r.clone())).collect())
            .unwrap_or_default()
    }

    fn role(&self, doc: &DocId, user: &UserId) -> Option<&str> {
        self.by_doc.get(doc)?.get(user).map(String::as_str)
    }
}

/// What `identity` may do in `doc`: its roles, its token's grant for `doc`, the ACL's.
///
/// An inbox ([`DocId::is_inbox`]) is the exception: it is the server's to write. Its owner may
/// read it, run its mutators (mark-read, preferences) and set presence in it; an admin may do
/// anything; nobody else may do anything, whatever their roles, grants or the ACL say.
pub fn permissions(roles: &Roles, acl: &Acl, identity: &Identity, doc: &DocId) -> Permissions {
    // The server's own writes (notifications) are not subject to roles, which an operator
    // may define without an admin; no token can name this user.
    if identity.user == UserId::server() {
        return Permissions::ALL;
    }
    if doc.is_inbox() {
        return if global_permissions(roles, identity).has(Permission::Admin) {
            Permissions::ALL
        } else if *doc == DocId::inbox_of(&identity.user) {
            Permissions::of(&[Permission::Read, Permission::Mutate, Permission::Presence])
        } else {
            Permissions::NONE
        };
    }
    let mut p = identity
        .roles
        .iter()
        .fold(Permissions::NONE, |acc, r| acc.union(roles.of(r)));
    for (d, role) in &identity.grants {
        if d == doc {
            p = p.union(roles.of(role));
        }
    }
    if let Some(role) = acl.role(doc, &identity.user) {
        p = p.union(roles.of(role));
    }
    p
}

/// What `identity` may do outside any document (its roles only): e.g. admin.
pub fn global_permissions(roles: &Roles, identity: &Identity) -> Permissions {
    identity
        .roles
        .iter()
        .fold(Permissions::NONE, |acc, r| acc.union(roles.of(r)))
}
