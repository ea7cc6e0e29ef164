//! The shop's sections (`[[products]]`, `[pay]`, `[pay.wechat]`, `[pay.alipay]`) and the key
//! files they name, loaded and checked here so that validation and the shop read them alike.

use std::path::{Path, PathBuf};

use chatrelay_alipay as alipay;
use chatrelay_wechat_pay as wxpay;

use serde::{Deserialize, Serialize};

use super::secret::Secret;

/// `[[products]]`: one credit pack, or a membership plan (`plan`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductConfig {
    /// Stable id (used in orders and the API).
    pub id: String,
    /// Name shown to users.
    pub name: String,
    /// Price in fen (分): 100 = ¥1.00.
    pub price_fen: i64,
    /// Credits it gives (0 for a plan: exactly one of `credits` and `plan`).
    #[serde(default)]
    pub credits: u64,
    /// The `[[plans]]` id it sells instead of credits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

/// `[[plans]]`: a membership plan (会员, 月卡): `daily_credits` added to the free daily
/// allowance for `days` days, sold by a product (`[[products]] plan = "<id>"`) or granted by
/// a redemption code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanConfig {
    /// Stable id (products, codes and the user's plan name it).
    pub id: String,
    /// Name shown to users (`月卡`).
    pub name: String,
    /// Credits added to the free allowance each day while the plan is active.
    pub daily_credits: u64,
    /// How many days one purchase or code gives (buying again adds as many).
    pub days: u32,
    /// Models (`[[llm.models]] name`) its members may use even when `paid_only` or limited to
    /// `groups`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
}

impl PlanConfig {
    /// What a sale or a code of this plan grants, its days counted in the quota timezone
    /// (`utc_offset_secs`).
    #[must_use]
    pub fn grant(&self, utc_offset_secs: i32) -> chatrelay_storage::PlanGrant {
        chatrelay_storage::PlanGrant {
            id: self.id.clone(),
            name: self.name.clone(),
            days: self.days,
            daily_credits: self.daily_credits,
            utc_offset_secs,
        }
    }
}

/// `[pay]`: how orders are paid and kept in step with the providers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PayConfig {
    /// An order's QR code works this long; then the order is closed (at the provider first).
    pub order_ttl_secs: u64,
    /// How often open orders are checked with the provider (missed notifications).
    pub reconcile_interval_secs: u64,
    /// Open orders younger than this are left to the notification.
    pub reconcile_min_age_secs: u64,
    /// `[pay.wechat]`: WeChat Pay v3 Native.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wechat: Option<WechatPayConfig>,
    /// `[pay.alipay]`: Alipay face-to-face (QR).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alipay: Option<AlipayConfig>,
}

impl Default for PayConfig {
    fn default() -> Self {
        Self {
            order_ttl_secs: 900,
            reconcile_interval_secs: 60,
            reconcile_min_age_secs: 60,
            wechat: None,
            alipay: None,
        }
    }
}

/// `[pay.wechat]`: a WeChat Pay merchant (直连商户), API v3.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WechatPayConfig {
    /// 商户号.
    pub mch_id: String,
    /// The AppID bound to the merchant (the Official Account's).
    pub app_id: String,
    /// Serial number of the merchant API certificate (商户API证书序列号).
    pub serial_no: String,
    /// The merchant API private key, `apiclient_key.pem`.
    pub private_key_file: PathBuf,
    /// The APIv3 key (32 characters).
    pub api_v3_key: Secret,
    /// Public-key mode: the WeChat Pay public key (`pub_key.pem`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_public_key_file: Option<PathBuf>,
    /// Public-key mode: its id (`PUB_KEY_ID_…`), as sent in `Wechatpay-Serial`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key_id: Option<String>,
    /// Certificate mode: platform certificates (PEM); their serials are read from them.
    #[serde(default)]
    pub platform_cert_files: Vec<PathBuf>,
    /// Base URL of the API.
    #[serde(default = "wechat_pay_api_base")]
    pub api_base: String,
    /// The ways to pay offered: `native` (QR, desktop), `jsapi` (inside WeChat's browser),
    /// `h5` (phone browsers; needs the H5 product and its domain in the merchant console).
    /// Default: `native`, and `jsapi` when a `[[wechat_mp]]` has this `app_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
}

/// WeChat Pay's ways to pay.
pub const WECHAT_METHODS: [&str; 3] = ["native", "jsapi", "h5"];
/// Alipay's ways to pay.
pub const ALIPAY_METHODS: [&str; 3] = ["precreate", "wap", "page"];

impl WechatPayConfig {
    /// The methods in force: as configured, or the default (see [`WechatPayConfig::methods`]).
    #[must_use]
    pub fn methods_in_force(&self, accounts: &[super::channels::WechatMpConfig]) -> Vec<String> {
        match &self.methods {
            Some(m) => m.clone(),
            None if accounts.iter().any(|a| a.app_id == self.app_id) => {
                vec!["native".to_owned(), "jsapi".to_owned()]
            }
            None => vec!["native".to_owned()],
        }
    }
}

fn wechat_pay_api_base() -> String {
    "https://api.mch.weixin.qq.com".to_owned()
}

/// `[pay.alipay]`: an Alipay app with face-to-face payment (当面付).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlipayConfig {
    /// The app's APPID.
    pub app_id: String,
    /// The app private key (PEM or bare base64, PKCS#8 or PKCS#1).
    pub private_key_file: PathBuf,
    /// The Alipay public key (支付宝公钥, PEM or bare base64).
    pub alipay_public_key_file: PathBuf,
    /// The gateway.
    #[serde(default = "alipay_gateway")]
    pub gateway: String,
    /// When set, notifications must name this seller (the merchant's 2088… id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seller_id: Option<String>,
    /// The ways to pay offered: `precreate` (当面付 QR), `wap` (手机网站支付), `page`
    /// (电脑网站支付); each is a product signed in the Alipay console. Default: `precreate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<String>>,
}

impl AlipayConfig {
    /// The methods in force: as configured, or `precreate`.
    #[must_use]
    pub fn methods_in_force(&self) -> Vec<String> {
        self.methods
            .clone()
            .unwrap_or_else(|| vec!["precreate".to_owned()])
    }
}

fn alipay_gateway() -> String {
    "https://openapi.alipay.com/gateway.do".to_owned()
}

/// A configuration file problem: the key (below `pay.wechat` / `pay.alipay`) and what is wrong.
#[derive(Debug)]
pub struct KeyProblem(pub &'static str, pub String);

fn read(path: &Path, key: &'static str) -> Result<String, KeyProblem> {
    std::fs::read_to_string(path)
        .map_err(|e| KeyProblem(key, format!("cannot read {}: {e}", path.display())))
}

/// Loads and checks the WeChat Pay keys named by the configuration.
pub fn load_wechat_keys(
    cfg: &WechatPayConfig,
) -> Result<(wxpay::MerchantKey, wxpay::PlatformKeys, wxpay::ApiV3Key), KeyProblem> {
    let merchant = wxpay::MerchantKey::from_pem(&read(&cfg.private_key_file, "private_key_file")?)
        .map_err(|e| KeyProblem("private_key_file", e.to_string()))?;
    let v3 = wxpay::ApiV3Key::new(cfg.api_v3_key.expose())
        .map_err(|_| KeyProblem("api_v3_key", "must be the 32-character APIv3 key".into()))?;
    let mut keys = wxpay::PlatformKeys::new();
    match (&cfg.platform_public_key_file, &cfg.public_key_id) {
        (Some(file), Some(id)) => {
            let key = wxpay::PlatformKey::from_pem(&read(file, "platform_public_key_file")?)
                .map_err(|e| KeyProblem("platform_public_key_file", e.to_string()))?;
            keys.insert(id, key);
        }
        (Some(_), None) => {
            return Err(KeyProblem(
                "public_key_id",
                "is required with platform_public_key_file (PUB_KEY_ID_…)".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(KeyProblem(
                "platform_public_key_file",
                "is required with public_key_id".into(),
            ));
        }
        (None, None) => {}
    }
    for file in &cfg.platform_cert_files {
        let (serial, key) =
            wxpay::PlatformKey::from_certificate_pem(&read(file, "platform_cert_files")?).map_err(
                |e| KeyProblem("platform_cert_files", format!("{}: {e}", file.display())),
            )?;
        keys.insert(&serial, key);
    }
    if keys.is_empty() {
        return Err(KeyProblem(
            "platform_public_key_file",
            "give the WeChat Pay public key (platform_public_key_file + public_key_id) or platform_cert_files".into(),
        ));
    }
    if cfg.mch_id.is_empty() || !cfg.mch_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(KeyProblem("mch_id", "must be the merchant number".into()));
    }
    if cfg.app_id.trim().is_empty() {
        return Err(KeyProblem("app_id", "is required".into()));
    }
    if cfg.serial_no.trim().is_empty() {
        return Err(KeyProblem(
            "serial_no",
            "is required (商户API证书序列号)".into(),
        ));
    }
    Ok((merchant, keys, v3))
}

/// Loads and checks the Alipay keys named by the configuration.
pub fn load_alipay_keys(
    cfg: &AlipayConfig,
) -> Result<(alipay::AppPrivateKey, alipay::AlipayPublicKey), KeyProblem> {
    let app = alipay::AppPrivateKey::from_pem_or_base64(&read(
        &cfg.private_key_file,
        "private_key_file",
    )?)
    .map_err(|e| KeyProblem("private_key_file", e.to_string()))?;
    let public = alipay::AlipayPublicKey::from_pem_or_base64(&read(
        &cfg.alipay_public_key_file,
        "alipay_public_key_file",
    )?)
    .map_err(|e| KeyProblem("alipay_public_key_file", e.to_string()))?;
    Ok((app, public))
}
