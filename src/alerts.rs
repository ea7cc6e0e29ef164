//! Operators' alerts: paid orders, refunds, payment verification failures, an upstream LLM
//! failing again and again. Every alert is logged under the `chatrelay::alert` target and
//! sent to the configured WeCom group robots (which allow 20 messages a minute: beyond that
//! an alert is only logged).

use std::sync::{Arc, RwLock};

use chatrelay_wechat::RobotClient;
use tracing::{info, warn};

use crate::config::Config;

/// The log target of alerts.
pub const TARGET: &str = "chatrelay::alert";

type Robots = Arc<Vec<(String, RobotClient)>>;

/// Sends alerts. Cheap to clone; clones share the robots, which a reload replaces.
#[derive(Clone, Default)]
pub struct Alerter {
    robots: Arc<RwLock<Robots>>,
    http: Option<reqwest::Client>,
}

impl Alerter {
    /// The robots of the configuration (none is fine: alerts are then only logged).
    #[must_use]
    pub fn from_config(config: &Config, http: reqwest::Client) -> Self {
        let robots = Self::robots_of(config, &http);
        Self {
            robots: Arc::new(RwLock::new(robots)),
            http: Some(http),
        }
    }

    /// Takes the robots of a reloaded configuration (every clone sees them).
    pub fn reload(&self, config: &Config) {
        let http = self.http.clone().unwrap_or_default();
        let robots = Self::robots_of(config, &http);
        *self.robots.write().unwrap_or_else(|p| p.into_inner()) = robots;
    }

    fn robots_of(config: &Config, http: &reqwest::Client) -> Robots {
        let robots = config
            .wecom_robot
            .iter()
            .map(|r| {
                (
                    r.id.clone(),
                    RobotClient::new(r.webhook.expose(), &r.api_base, http.clone()),
                )
            })
            .collect();
        Arc::new(robots)
    }

    /// Logs `text` and sends it to every robot, without waiting.
    pub fn alert(&self, text: String) {
        info!(target: TARGET, "{text}");
        metrics::counter!("chatrelay_alerts_total").increment(1);
        let robots = self
            .robots
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if robots.is_empty() {
            return;
        }
        tokio::spawn(async move {
            for (id, robot) in robots.iter() {
                if let Err(e) = robot.send_text(&format!("【chatrelay】{text}")).await {
                    warn!(robot = %id, error = %e, "alert not delivered to the group robot");
                }
            }
        });
    }
}
