//! Webhooks over GraphQL: `createWebhook` (the secret is shown once; only
//! its seal is recorded), `deleteWebhook`, `webhooks`, each webhook's
//! `webhookDeliveries` with their attempts, and `redeliver`.

use async_graphql::{Context, ID, Object, SimpleObject};
use domain::account::Username;
use domain::webhook::{DeliveryId, Topic, Webhook, WebhookCommand, WebhookError, WebhookId};
use projections::{Row, SqlValue, webhooks_view};
use secrecy::ExposeSecret;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::auth::sessions::Principal;
use crate::graphql::error::{self, Code, Coded};
use crate::graphql::{ADMINS, app, check_first, decision, from_micros, principal, row_err};
use crate::webhooks;

/// A webhook as listed: never its secret.
#[derive(SimpleObject)]
pub struct WebhookInfo {
    pub id: ID,
    pub owner: String,
    pub url: String,
    /// The topics it hears of, e.g. `job.done`.
    pub events: Vec<String>,
    pub created_at: OffsetDateTime,
}

/// A webhook just made. `secret` is shown this once: receivers check
/// signatures with it.
#[derive(SimpleObject)]
pub struct NewWebhook {
    pub webhook: WebhookInfo,
    pub secret: String,
}

/// One event sent (or to be sent) to one webhook.
#[derive(SimpleObject)]
pub struct WebhookDelivery {
    /// `<event id>.<webhook id>`: what `redeliver` takes.
    pub id: ID,
    pub webhook: ID,
    /// Its topic, e.g. `job.done`.
    pub event: String,
    /// The JSON body sent.
    pub body: String,
    /// `pending`, `delivered`, `failed` (given up) or `cancelled`.
    pub state: String,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<OffsetDateTime>,
    pub next_attempt_at: Option<OffsetDateTime>,
    pub delivered_at: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
}

fn info_from(row: &Row) -> async_graphql::Result<WebhookInfo> {
    let topics: String = row.get("topics").map_err(row_err)?;
    Ok(WebhookInfo {
        id: ID(row.get("webhook").map_err(row_err)?),
        owner: row.get("owner").map_err(row_err)?,
        url: row.get("url").map_err(row_err)?,
        events: topics.split(',').map(str::to_owned).collect(),
        created_at: from_micros(row.get("created_at").map_err(row_err)?),
    })
}

fn delivery_from(row: &Row) -> async_graphql::Result<WebhookDelivery> {
    let at = |column: &str| -> async_graphql::Result<Option<OffsetDateTime>> {
        Ok(row
            .get::<Option<i64>>(column)
            .map_err(row_err)?
            .map(from_micros))
    };
    Ok(WebhookDelivery {
        id: ID(row.get("delivery").map_err(row_err)?),
        webhook: ID(row.get("webhook").map_err(row_err)?),
        event: row.get("topic").map_err(row_err)?,
        body: row.get("body").map_err(row_err)?,
        state: row.get("state").map_err(row_err)?,
        attempts: u32::try_from(row.get::<i64>("attempts").map_err(row_err)?).map_err(row_err)?,
        last_status: row
            .get::<Option<i64>>("last_status")
            .map_err(row_err)?
            .and_then(|s| u16::try_from(s).ok()),
        last_error: row.get("last_error").map_err(row_err)?,
        last_attempt_at: at("last_attempt_at")?,
        next_attempt_at: at("next_attempt_at")?,
        delivered_at: at("delivered_at")?,
        created_at: from_micros(row.get("created_at").map_err(row_err)?),
    })
}

fn is_admin(p: &Principal) -> bool {
    ADMINS.iter().any(|r| p.roles.contains(r))
}

fn parse_id(field: &str, raw: &str) -> async_graphql::Result<WebhookId> {
    Uuid::parse_str(raw.trim())
        .map(WebhookId)
        .map_err(|e| error::invalid(field, format!("not a webhook id: {e}")))
}

fn not_found(id: WebhookId) -> async_graphql::Error {
    error::error(Code::NotFound, format!("there is no webhook {id}"))
}

/// Webhook `id` as the view has it, if `p` may see it.
async fn readable(
    ctx: &Context<'_>,
    p: &Principal,
    id: WebhookId,
) -> async_graphql::Result<WebhookInfo> {
    let rows = app(ctx)
        .views
        .query(
            &format!(
                "SELECT * FROM {} WHERE webhook = $1 AND NOT deleted",
                webhooks_view::WEBHOOKS
            ),
            vec![SqlValue::from(id.to_string())],
        )
        .await
        .map_err(|e| error::internal("cannot read the webhook", &e))?;
    let info = rows
        .first()
        .map(info_from)
        .transpose()?
        .ok_or_else(|| not_found(id))?;
    if info.owner == p.username.as_str() || is_admin(p) {
        Ok(info)
    } else {
        Err(not_found(id))
    }
}

#[derive(Default)]
pub struct WebhookQuery;

#[Object]
impl WebhookQuery {
    /// One's own webhooks (admins: everyone's), newest first.
    async fn webhooks(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<WebhookInfo>> {
        let p = principal(ctx)?;
        let (filter, params) = if is_admin(p) {
            ("", vec![])
        } else {
            (" AND owner = $1", vec![SqlValue::from(p.username.as_str())])
        };
        let rows = app(ctx)
            .views
            .query(
                &format!(
                    "SELECT * FROM {} WHERE NOT deleted{filter} ORDER BY created_at DESC, webhook",
                    webhooks_view::WEBHOOKS
                ),
                params,
            )
            .await
            .map_err(|e| error::internal("cannot read the webhooks", &e))?;
        rows.iter().map(info_from).collect()
    }

    /// A webhook's deliveries, newest first, optionally in one `state`.
    async fn webhook_deliveries(
        &self,
        ctx: &Context<'_>,
        webhook_id: ID,
        state: Option<String>,
        #[graphql(default = 50)] first: i32,
    ) -> async_graphql::Result<Vec<WebhookDelivery>> {
        let p = principal(ctx)?;
        check_first(first)?;
        let id = parse_id("webhookId", &webhook_id)?;
        readable(ctx, p, id).await?;
        let mut sql = format!(
            "SELECT * FROM {} WHERE webhook = $1",
            webhooks_view::DELIVERIES
        );
        let mut params = vec![SqlValue::from(id.to_string())];
        if let Some(state) = state {
            if !["pending", "delivered", "failed", "cancelled"].contains(&state.as_str()) {
                return Err(error::invalid(
                    "state",
                    format!("{state:?} is none of pending, delivered, failed, cancelled"),
                ));
            }
            params.push(SqlValue::from(state));
            sql.push_str(" AND state = $2");
        }
        params.push(SqlValue::from(first));
        sql.push_str(&format!(
            " ORDER BY created_at DESC, delivery LIMIT ${}",
            params.len()
        ));
        let rows = app(ctx)
            .views
            .query(&sql, params)
            .await
            .map_err(|e| error::internal("cannot read the deliveries", &e))?;
        rows.iter().map(delivery_from).collect()
    }
}

#[derive(Default)]
pub struct WebhookMutation;

#[Object]
impl WebhookMutation {
    /// Sends the chosen `events` (e.g. `job.done`, `job.failed`) of the
    /// logged-in account, or (admins) of `owner`, to `url`, signed with
    /// `secret` (made if not given, and shown only in this answer).
    async fn create_webhook(
        &self,
        ctx: &Context<'_>,
        url: String,
        events: Vec<String>,
        secret: Option<String>,
        owner: Option<String>,
    ) -> async_graphql::Result<NewWebhook> {
        let p = principal(ctx)?;
        let owner = match owner {
            Some(o) => Username::parse(&o).map_err(|e| error::invalid("owner", e))?,
            None => p.username.clone(),
        };
        // Each field's fault before the gateway's own (no data key).
        domain::webhook::check_url(&url).map_err(|e| error::invalid("url", e))?;
        let topics = events
            .iter()
            .enumerate()
            .map(|(i, e)| {
                e.parse::<Topic>()
                    .map_err(|why| error::invalid(&format!("events[{i}]"), why))
            })
            .collect::<async_graphql::Result<Vec<Topic>>>()?;
        let secret = match secret {
            Some(given) => {
                webhooks::check_secret(&given).map_err(|e| error::invalid("secret", e))?
            }
            None => webhooks::generate_secret(),
        };
        let key = app(ctx).data_key.as_deref().ok_or_else(|| {
            error::error(
                Code::Validation,
                "this gateway has no data key to seal webhook secrets with: set data_key (TB_DATA_KEY), the same on every gateway",
            )
        })?;
        let sealed_secret = webhooks::seal(key, &secret)
            .map_err(|e| error::internal("cannot seal the secret", &e))?;
        let id = WebhookId(Uuid::now_v7());
        let stream = id
            .stream()
            .map_err(|e| error::internal("webhook stream", &e))?;
        let handled = crate::graphql::handle::<Webhook>(
            ctx,
            &stream,
            WebhookCommand::Create {
                webhook: id,
                owner,
                url,
                topics,
                sealed_secret,
            },
            &decision(ctx)?,
            None,
        )
        .await?;
        if let Some(position) = handled.position {
            let _ = crate::live::view_reached(app(ctx), webhooks_view::NAME, position).await;
        }
        Ok(NewWebhook {
            webhook: readable(ctx, p, id).await?,
            secret: secret.expose_secret().to_owned(),
        })
    }

    /// Stops a webhook: nothing more is sent to it, pending deliveries included.
    async fn delete_webhook(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let id = parse_id("id", &id)?;
        command(ctx, id, WebhookCommand::Delete).await
    }

    /// Sends a delivery again (a new attempt, and a day of retries if it fails).
    async fn redeliver(&self, ctx: &Context<'_>, delivery_id: ID) -> async_graphql::Result<bool> {
        let delivery: DeliveryId = delivery_id
            .parse()
            .map_err(|e| error::invalid("deliveryId", e))?;
        let rows = app(ctx)
            .views
            .query(
                &format!(
                    "SELECT delivery FROM {} WHERE delivery = $1",
                    webhooks_view::DELIVERIES
                ),
                vec![SqlValue::from(delivery.to_string())],
            )
            .await
            .map_err(|e| error::internal("cannot read the delivery", &e))?;
        if rows.is_empty() {
            return Err(error::error(
                Code::NotFound,
                format!("there is no delivery {delivery}"),
            ));
        }
        command(
            ctx,
            delivery.webhook,
            WebhookCommand::Redeliver { delivery },
        )
        .await
    }
}

/// Runs `command` on webhook `id`, which must be one `ctx`'s principal
/// may see: someone else's webhook reads as none at all.
async fn command(
    ctx: &Context<'_>,
    id: WebhookId,
    command: WebhookCommand,
) -> async_graphql::Result<bool> {
    readable(ctx, principal(ctx)?, id).await?;
    let stream = id
        .stream()
        .map_err(|e| error::internal("webhook stream", &e))?;
    crate::graphql::handle::<Webhook>(ctx, &stream, command, &decision(ctx)?, None).await?;
    Ok(true)
}

impl Coded for WebhookError {
    fn code(&self) -> Code {
        match self {
            WebhookError::Exists(_) => Code::Conflict,
            WebhookError::NotFound | WebhookError::OtherWebhook(_) => Code::NotFound,
            WebhookError::Deleted => Code::Conflict,
            WebhookError::Forbidden(_)
            | WebhookError::NotYourAccount
            | WebhookError::FleetTopic(_)
            | WebhookError::NotTheSender => Code::Forbidden,
            WebhookError::BadUrl(_) | WebhookError::NoTopics => Code::Validation,
        }
    }
}
