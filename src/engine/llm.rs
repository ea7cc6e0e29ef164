//! The LLM as the engine sees it: one streaming call, whatever answers it. Two backends: any
//! OpenAI-compatible API (through `chatrelay-openai`) and the offline demo.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chatrelay_core::Usage;
use chatrelay_openai::router::{Route, Router};
use chatrelay_openai::{ChatRequest, Client, ClientConfig, Message};
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use crate::config::{Config, Provider};

/// Errors of an LLM call (the OpenAI client's, which the demo never produces).
pub type LlmError = chatrelay_openai::Error;

/// One call to the LLM.
#[derive(Debug, Clone, Default)]
pub struct LlmRequest {
    /// Model name as the upstream knows it.
    pub model: String,
    /// The whole prompt.
    pub messages: Vec<Message>,
    /// Cap on the answer's tokens: exactly the limit the engine reserved credits for.
    pub max_completion_tokens: Option<u32>,
    /// Send the cap as the older `max_tokens` (the `/v1` client used that field, so its
    /// upstream may know only that one) instead of `max_completion_tokens`.
    pub legacy_max_tokens: bool,
    /// Other request parameters, passed through (temperature, top_p... from `/v1` callers).
    /// Any answer cap in here is dropped: only the engine's limit goes upstream.
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl LlmRequest {
    /// The OpenAI request: the cap in one field, never a second cap from `extra` (a client's
    /// `max_tokens` passed through would let the upstream write more than was paid for).
    #[must_use]
    pub fn into_chat_request(self) -> ChatRequest {
        let mut extra = self.extra;
        extra.remove("max_tokens");
        extra.remove("max_completion_tokens");
        let mut max_completion_tokens = self.max_completion_tokens;
        if self.legacy_max_tokens
            && let Some(cap) = max_completion_tokens.take()
        {
            extra.insert("max_tokens".to_owned(), cap.into());
        }
        ChatRequest {
            model: self.model,
            messages: self.messages,
            max_completion_tokens,
            extra,
            ..ChatRequest::default()
        }
    }
}

/// What a streaming call yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlmEvent {
    /// More answer text.
    Delta(String),
    /// Token usage, reported once near the end.
    Usage(Usage),
}

/// A streamed answer.
pub type LlmStream = BoxStream<'static, Result<LlmEvent, LlmError>>;

/// Something that answers chat requests.
pub trait LlmBackend: Send + Sync + 'static {
    /// Starts a streaming call. Retries, if any, happen before the stream is returned.
    fn stream(&self, req: LlmRequest) -> BoxFuture<'static, Result<LlmStream, LlmError>>;

    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Draws `prompt`; returns the pictures' URLs. Backends without an image endpoint say so.
    fn image(&self, prompt: String) -> BoxFuture<'static, Result<Vec<String>, LlmError>> {
        let _ = prompt;
        Box::pin(async {
            Err(chatrelay_openai::Error::InvalidConfig(
                "no image generation configured ([images])".into(),
            ))
        })
    }

    /// Transcribes an audio file (`[speech]`); returns the transcript. Backends without a
    /// transcription upstream say so.
    fn transcribe(
        &self,
        req: chatrelay_openai::audio::TranscriptionRequest,
    ) -> BoxFuture<'static, Result<String, chatrelay_openai::audio::AudioError>> {
        let _ = req;
        Box::pin(async {
            Err(chatrelay_openai::Error::InvalidConfig(
                "no transcription configured ([speech])".into(),
            )
            .into())
        })
    }

    /// Speaks a text (`[speech] speech_model`, `voice`); returns the audio. Backends without
    /// a speech upstream say so.
    fn speak(
        &self,
        req: chatrelay_openai::speech::SpeechRequest,
    ) -> BoxFuture<
        'static,
        Result<chatrelay_openai::speech::Speech, chatrelay_openai::speech::SpeechError>,
    > {
        let _ = req;
        Box::pin(async {
            Err(
                chatrelay_openai::Error::InvalidConfig("no speech configured ([speech])".into())
                    .into(),
            )
        })
    }

    /// Health of each upstream (none for the demo).
    fn health(&self) -> Vec<chatrelay_openai::router::UpstreamHealth> {
        Vec::new()
    }
}

/// Builds the backend the configuration asks for: the demo, or every upstream (`[llm]` as
/// `default`, plus `[[llm.upstreams]]`) behind one router that falls back between them.
pub fn from_config(config: &Config) -> Result<Arc<dyn LlmBackend>, LlmError> {
    Ok(match config.provider() {
        Provider::Demo => Arc::new(DemoBackend {
            piece_delay: Duration::from_millis(config.llm.demo_piece_delay_ms),
        }),
        Provider::Openai => {
            let llm = &config.llm;
            let base = ClientConfig {
                base_url: llm.base_url.clone(),
                api_keys: llm.api_keys.iter().map(|k| k.expose().to_owned()).collect(),
                connect_timeout: Duration::from_secs(llm.connect_timeout_secs),
                timeout: Duration::from_secs(llm.timeout_secs),
                idle_timeout: Duration::from_secs(llm.idle_timeout_secs),
                max_retries: llm.max_retries,
                http2_prior_knowledge: llm.http2_prior_knowledge,
                ..ClientConfig::default()
            };
            let mut upstreams = vec![(DEFAULT_UPSTREAM.to_owned(), Client::new(base.clone())?)];
            for u in &llm.upstreams {
                let client = Client::new(ClientConfig {
                    base_url: u.base_url.clone(),
                    api_keys: u.api_keys.iter().map(|k| k.expose().to_owned()).collect(),
                    headers: u
                        .headers
                        .iter()
                        .map(|(k, v)| (k.clone(), v.expose().to_owned()))
                        .collect(),
                    max_retries: u.max_retries.unwrap_or(llm.max_retries),
                    timeout: u.timeout_secs.map_or(base.timeout, Duration::from_secs),
                    ..base.clone()
                })
                .map_err(|e| {
                    chatrelay_openai::Error::InvalidConfig(format!("llm.upstreams {}: {e}", u.id))
                })?;
                upstreams.push((u.id.clone(), client));
            }
            let route_of = |m: &crate::config::ModelConfig| {
                Route::new(
                    m.upstream
                        .clone()
                        .unwrap_or_else(|| DEFAULT_UPSTREAM.to_owned()),
                    m.upstream_model.clone().unwrap_or_else(|| m.name.clone()),
                )
            };
            let mut routes = HashMap::new();
            for m in &llm.models {
                let mut list = vec![route_of(m)];
                for f in &m.fallbacks {
                    if let Some(fm) = llm.models.iter().find(|x| &x.name == f) {
                        list.push(route_of(fm));
                    }
                }
                routes.insert(m.name.clone(), list);
            }
            let images = config.images.as_ref().map(|i| ImageRoute {
                route: Route::new(
                    i.upstream
                        .clone()
                        .unwrap_or_else(|| DEFAULT_UPSTREAM.to_owned()),
                    i.model.clone(),
                ),
                size: i.size.clone(),
            });
            let speech = config.speech.as_ref().map(|sp| {
                std::iter::once(sp.upstream.as_deref().unwrap_or(DEFAULT_UPSTREAM))
                    .chain(sp.fallbacks.iter().map(String::as_str))
                    .map(|u| Route::new(u.to_owned(), sp.model.clone()))
                    .collect::<Vec<_>>()
            });
            // Spoken answers go the same way as transcriptions, with the speech model.
            let spoken = speech
                .as_ref()
                .zip(config.speech.as_ref())
                .map(|(routes, sp)| {
                    routes
                        .iter()
                        .map(|r| Route::new(r.upstream.clone(), sp.speech_model.clone()))
                        .collect::<Vec<_>>()
                });
            Arc::new(RoutedBackend {
                router: Router::new(upstreams),
                routes,
                images,
                speech,
                spoken,
            })
        }
    })
}

/// The upstream `[llm] base_url` / `api_keys` describe.
pub const DEFAULT_UPSTREAM: &str = "default";

/// Every configured upstream behind one [`Router`]: a model's first route is tried, then its
/// fallbacks when that upstream is down or rate limited.
pub struct RoutedBackend {
    router: Router,
    /// Model name (as users know it) → routes, first preferred.
    routes: HashMap<String, Vec<Route>>,
    /// Where pictures are drawn, if anywhere.
    images: Option<ImageRoute>,
    /// Where voice is transcribed (`[speech]`: its upstream, then its fallbacks), if anywhere.
    speech: Option<Vec<Route>>,
    /// Where answers are spoken (`[speech] speech_model`, same upstreams), if anywhere.
    spoken: Option<Vec<Route>>,
}

struct ImageRoute {
    route: Route,
    size: Option<String>,
}

impl LlmBackend for RoutedBackend {
    fn stream(&self, req: LlmRequest) -> BoxFuture<'static, Result<LlmStream, LlmError>> {
        let router = self.router.clone();
        let routes = self
            .routes
            .get(&req.model)
            .cloned()
            .unwrap_or_else(|| vec![Route::new(DEFAULT_UPSTREAM, req.model.clone())]);
        Box::pin(async move {
            let request = req.into_chat_request();
            let (stream, used) = router.chat_stream(&routes, &request).await?;
            if used > 0 {
                let upstream = routes.get(used).map_or("", |r| r.upstream.as_str());
                tracing::info!(fallback = used, %upstream, "answered by a fallback upstream");
                metrics::counter!("chatrelay_llm_fallbacks_total", "upstream" => upstream.to_owned())
                    .increment(1);
            }
            Ok(to_events(stream))
        })
    }

    fn name(&self) -> &'static str {
        "openai"
    }

    fn image(&self, prompt: String) -> BoxFuture<'static, Result<Vec<String>, LlmError>> {
        let router = self.router.clone();
        let target = self
            .images
            .as_ref()
            .map(|i| (i.route.clone(), i.size.clone()));
        Box::pin(async move {
            let Some((route, size)) = target else {
                return Err(chatrelay_openai::Error::InvalidConfig(
                    "no image generation configured ([images])".into(),
                ));
            };
            let req = chatrelay_openai::ImageRequest {
                model: route.model.clone(),
                prompt,
                n: Some(1),
                size,
                // A link every platform can show or open; base64 would have to be hosted.
                response_format: Some("url".to_owned()),
                ..chatrelay_openai::ImageRequest::default()
            };
            let (res, _) = router.images_generate(&[route], &req).await?;
            let urls: Vec<String> = res.data.into_iter().filter_map(|d| d.url).collect();
            if urls.is_empty() {
                return Err(chatrelay_openai::Error::Decode {
                    message: "the image upstream returned no picture URL".into(),
                    raw: String::new(),
                });
            }
            Ok(urls)
        })
    }

    fn transcribe(
        &self,
        req: chatrelay_openai::audio::TranscriptionRequest,
    ) -> BoxFuture<'static, Result<String, chatrelay_openai::audio::AudioError>> {
        let router = self.router.clone();
        let routes = self.speech.clone();
        Box::pin(async move {
            let Some(routes) = routes else {
                return Err(chatrelay_openai::Error::InvalidConfig(
                    "no transcription configured ([speech])".into(),
                )
                .into());
            };
            let (heard, used) = router.transcribe(&routes, &req).await?;
            if used > 0 {
                let upstream = routes.get(used).map_or("", |r| r.upstream.as_str());
                tracing::info!(fallback = used, %upstream, "transcribed by a fallback upstream");
            }
            Ok(heard.text)
        })
    }

    fn speak(
        &self,
        req: chatrelay_openai::speech::SpeechRequest,
    ) -> BoxFuture<
        'static,
        Result<chatrelay_openai::speech::Speech, chatrelay_openai::speech::SpeechError>,
    > {
        let router = self.router.clone();
        let routes = self.spoken.clone();
        Box::pin(async move {
            let Some(routes) = routes else {
                return Err(chatrelay_openai::Error::InvalidConfig(
                    "no speech configured ([speech])".into(),
                )
                .into());
            };
            let (speech, used) = router.speak(&routes, &req).await?;
            if used > 0 {
                let upstream = routes.get(used).map_or("", |r| r.upstream.as_str());
                tracing::info!(fallback = used, %upstream, "spoken by a fallback upstream");
            }
            Ok(speech)
        })
    }

    fn health(&self) -> Vec<chatrelay_openai::router::UpstreamHealth> {
        self.router.health()
    }
}

/// Answer text and usage out of OpenAI chunks.
fn to_events<S>(stream: S) -> LlmStream
where
    S: futures_util::Stream<Item = Result<chatrelay_openai::ChatChunk, LlmError>> + Send + 'static,
{
    stream
        .flat_map(|item| {
            let out: Vec<Result<LlmEvent, LlmError>> = match item {
                Err(e) => vec![Err(e)],
                Ok(chunk) => {
                    let mut v = Vec::new();
                    for choice in chunk.choices.iter().filter(|c| c.index == 0) {
                        if let Some(text) = &choice.delta.content
                            && !text.is_empty()
                        {
                            v.push(Ok(LlmEvent::Delta(text.clone())));
                        }
                    }
                    if let Some(u) = &chunk.usage {
                        v.push(Ok(LlmEvent::Usage(Usage {
                            prompt_tokens: u.prompt_tokens,
                            completion_tokens: u.completion_tokens,
                        })));
                    }
                    v
                }
            };
            futures_util::stream::iter(out)
        })
        .boxed()
}

/// Any OpenAI-compatible chat completions API.
pub struct OpenAiBackend {
    client: Client,
}

impl OpenAiBackend {
    /// Wraps a configured client.
    #[must_use]
    pub fn new(client: Client) -> Self {
        Self { client }
    }
}

impl LlmBackend for OpenAiBackend {
    fn stream(&self, req: LlmRequest) -> BoxFuture<'static, Result<LlmStream, LlmError>> {
        let client = self.client.clone();
        Box::pin(async move {
            let request = req.into_chat_request();
            let stream = client.chat_stream(&request).await?;
            Ok(to_events(stream))
        })
    }

    fn name(&self) -> &'static str {
        "openai"
    }
}

/// The offline stand-in used when no API key is configured. It says plainly that it is a
/// demo, echoes the question, and streams like a real model so every path can be tried.
#[derive(Debug, Clone)]
pub struct DemoBackend {
    /// Pause between streamed pieces.
    pub piece_delay: Duration,
}

impl Default for DemoBackend {
    fn default() -> Self {
        Self {
            piece_delay: Duration::from_millis(20),
        }
    }
}

/// A short sample of what answers can contain, appended to every demo answer so a new user
/// sees a list, a table, highlighted code and a formula rendered without an API key.
pub const DEMO_SAMPLE: &str = r#"以下是格式示例：

- **粗体**、*斜体* 和 `行内代码`
- 行内公式 $E = mc^2$

| 模型 | 适合 |
| --- | --- |
| 小模型 | 日常问答 |
| 大模型 | 代码与推理 |

```python
def fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a
```

$$\sum_{i=1}^{n} i = \frac{n(n+1)}{2}$$"#;

/// The demo answer for a question: what it is, the question echoed, how to get a real model,
/// and [`DEMO_SAMPLE`].
#[must_use]
pub fn demo_answer(question: &str) -> String {
    let mut q: String = question.chars().take(200).collect();
    if q.chars().count() < question.chars().count() {
        q.push('…');
    }
    format!(
        "【演示模式】这是 chatrelay 的离线演示回复，还没有接入真实的大模型。\n\n你刚才说：「{q}」\n\n在配置文件 [llm] 中填写 api_keys（或设置环境变量 OPENAI_API_KEY）并重启后，即可由真实模型回答。\n\n{DEMO_SAMPLE}"
    )
}

impl LlmBackend for DemoBackend {
    fn stream(&self, req: LlmRequest) -> BoxFuture<'static, Result<LlmStream, LlmError>> {
        let delay = self.piece_delay;
        Box::pin(async move {
            let question = Message::last_user_text(&req.messages);
            let answer = demo_answer(&question);
            let prompt_tokens: u64 = req
                .messages
                .iter()
                .map(|m| super::quota::estimate_tokens(&m.text()))
                .sum();
            let usage = Usage {
                prompt_tokens,
                completion_tokens: super::quota::estimate_tokens(&answer),
            };
            let chars: Vec<char> = answer.chars().collect();
            let pieces: Vec<String> = chars.chunks(6).map(|c| c.iter().collect()).collect();
            let stream = futures_util::stream::iter(pieces)
                .then(move |piece| async move {
                    tokio::time::sleep(delay).await;
                    Ok(LlmEvent::Delta(piece))
                })
                .chain(futures_util::stream::once(async move {
                    Ok(LlmEvent::Usage(usage))
                }));
            Ok(stream.boxed())
        })
    }

    fn name(&self) -> &'static str {
        "demo"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_answer_shows_a_list_a_table_code_and_a_formula() {
        let a = demo_answer("你好");
        assert!(a.contains("你刚才说：「你好」"), "{a}");
        assert!(a.contains("\n- **粗体**"), "a list: {a}");
        assert!(
            a.contains("| 模型 | 适合 |\n| --- | --- |\n"),
            "a table: {a}"
        );
        assert!(
            a.contains("```python\ndef fib(n):\n    a, b = 0, 1\n"),
            "a code block: {a}"
        );
        assert!(a.contains("\n```\n"), "the code block is closed: {a}");
        assert!(
            a.contains("$$\\sum_{i=1}^{n} i = \\frac{n(n+1)}{2}$$"),
            "a formula: {a}"
        );
        assert!(a.contains("$E = mc^2$"), "an inline formula: {a}");
    }

    #[test]
    fn only_the_engines_cap_goes_upstream() {
        let mut extra = serde_json::Map::new();
        extra.insert("max_tokens".into(), 100_000.into());
        extra.insert("max_completion_tokens".into(), 100_000.into());
        extra.insert("top_p".into(), 0.5.into());
        let req = LlmRequest {
            model: "m".into(),
            max_completion_tokens: Some(42),
            extra,
            ..LlmRequest::default()
        };
        let wire = serde_json::to_value(req.clone().into_chat_request()).unwrap();
        assert_eq!(wire["max_completion_tokens"], 42);
        assert!(wire.get("max_tokens").is_none());
        assert_eq!(wire["top_p"], 0.5);
        let legacy = LlmRequest {
            legacy_max_tokens: true,
            ..req.clone()
        };
        let wire = serde_json::to_value(legacy.into_chat_request()).unwrap();
        assert_eq!(wire["max_tokens"], 42);
        assert!(wire.get("max_completion_tokens").is_none());
        let uncapped = LlmRequest {
            max_completion_tokens: None,
            ..req
        };
        let wire = serde_json::to_value(uncapped.into_chat_request()).unwrap();
        assert!(wire.get("max_tokens").is_none() && wire.get("max_completion_tokens").is_none());
    }

    #[tokio::test]
    async fn demo_says_it_is_a_demo_and_echoes() {
        let backend = DemoBackend {
            piece_delay: Duration::ZERO,
        };
        let stream = backend
            .stream(LlmRequest {
                model: "x".into(),
                messages: vec![Message::new("user", "你好")],
                ..LlmRequest::default()
            })
            .await
            .unwrap();
        let events: Vec<_> = stream.collect().await;
        let text: String = events
            .iter()
            .filter_map(|e| match e {
                Ok(LlmEvent::Delta(d)) => Some(d.as_str()),
                _ => None,
            })
            .collect();
        assert!(text.contains("演示"));
        assert!(text.contains("你好"));
        assert!(matches!(events.last(), Some(Ok(LlmEvent::Usage(_)))));
    }
}
