//! An in-memory [`InteractionLedger`] for tests of the interactions router
//! without a database (the app itself uses the store).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use drawbridge::interactions::{Claim, InteractionLedger};

#[derive(Debug, Default)]
pub struct MemoryLedger(Mutex<HashMap<String, Option<String>>>);

#[async_trait]
impl InteractionLedger for MemoryLedger {
    async fn claim(&self, id: &str, _now: DateTime<Utc>) -> anyhow::Result<Claim> {
        let mut seen = self.0.lock().unwrap();
        Ok(match seen.get(id) {
            Some(first) => Claim::Repeat(first.clone()),
            None => {
                seen.insert(id.to_owned(), None);
                Claim::First
            }
        })
    }

    async fn record(&self, id: &str, response: &str) -> anyhow::Result<()> {
        self.0
            .lock()
            .unwrap()
            .insert(id.to_owned(), Some(response.to_owned()));
        Ok(())
    }

    async fn first_response(&self, id: &str) -> anyhow::Result<Option<String>> {
        Ok(self.0.lock().unwrap().get(id).cloned().flatten())
    }
}
