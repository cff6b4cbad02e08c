//! Where a target's state is read: the local store, or, with `[cluster]`, the target's
//! owner through its HTTP API (`GET /api/v1/targets/{name}`, marked as forwarded so the
//! owner answers itself), so that every instance answers for every target.

use axum::http::HeaderValue;
use tokio::sync::watch;

use super::answer::{Readout, Refusal, Unavailable};
use crate::api::fleet::{Fleet, Placement, shown};
use crate::config::{Secret, ServerConfig};
use crate::store::Store;

/// What the scaler reads that a reload replaces: the store, and the API token it shows
/// another instance (`[server] api_token_*`, shared by the fleet) when reads need it.
#[derive(Clone)]
pub struct Current {
    /// The targets' state.
    pub store: Store,
    /// The API token of `[server]`.
    pub token: Option<Secret>,
}

impl Current {
    /// What the scaler reads of a configuration at work: its store, and `[server]`'s token.
    pub fn new(store: &Store, server: &ServerConfig) -> Self {
        Self {
            store: store.clone(),
            token: server.api_token.clone(),
        }
    }
}

/// Reads targets' state for the scaler.
#[derive(Clone)]
pub(super) struct Lookup {
    pub(super) current: watch::Receiver<Current>,
    pub(super) fleet: Option<Fleet>,
}

impl Lookup {
    /// `NOT_FOUND` unless `target` is configured.
    pub(super) fn known(&self, target: &str) -> Result<(), Refusal> {
        let store = self.current.borrow().store.clone();
        match store.target(target) {
            Some(_) => Ok(()),
            None => Err(Refusal::UnknownTarget(target.to_owned())),
        }
    }

    /// Whether `target` is owned by another live instance (its state is then asked of it).
    pub(super) fn is_remote(&self, target: &str) -> bool {
        self.fleet
            .as_ref()
            .is_some_and(|f| matches!(f.owners().placement(target), Placement::Remote(_)))
    }

    /// The replicas prescale wants for `target` now, read where it is decided.
    pub(super) async fn count(&self, target: &str) -> Result<u32, Refusal> {
        self.readout(target).await?.count(target)
    }

    /// `target`'s state, from its owner.
    async fn readout(&self, target: &str) -> Result<Readout, Refusal> {
        let Current { store, token } = self.current.borrow().clone();
        let readout = {
            let now = store.now();
            let t = store
                .target(target)
                .ok_or_else(|| Refusal::UnknownTarget(target.to_owned()))?;
            (t.owned_here).then(|| Readout::of(&t, now))
        };
        let unavailable = |why| Refusal::Unavailable {
            target: target.to_owned(),
            why,
        };
        let Some(fleet) = &self.fleet else {
            return readout.ok_or_else(|| unavailable(Unavailable::NotOwned));
        };
        let owners = fleet.owners();
        let owner = match owners.placement(target) {
            Placement::Here => return readout.ok_or_else(|| unavailable(Unavailable::NotOwned)),
            Placement::Remote(owner) => owner,
        };
        let auth =
            token.and_then(|t| HeaderValue::from_str(&format!("Bearer {}", t.expose())).ok());
        let path = format!("/api/v1/targets/{target}");
        let why = match fleet.get_json::<Readout>(owner, &path, auth.as_ref()).await {
            Ok((status, r)) if status.is_success() => return Ok(r),
            Ok((status, _)) => format!("it answered {status}"),
            Err(e) => e,
        };
        Err(unavailable(Unavailable::Owner(format!(
            "its owner, instance `{}` at {}, did not answer: {why}",
            owner.name,
            shown(owner)
        ))))
    }
}
