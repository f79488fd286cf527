//! Usage: CSV import of keys, usage reports, and changing what is left of a quota.

use serde_json::{json, Value};

use crate::control::registry::ApiError;

use crate::control::admin::views::values_json;
use crate::control::admin::wire::{body, lock, query, Ctx, Request, Response, TICK_WAIT};

/// Longest usage report, in days.
pub const MAX_REPORT_DAYS: u64 = 366;

pub fn import(ctx: &Ctx, req: &Request) -> Result<Response, ApiError> {
    let text =
        std::str::from_utf8(&req.body).map_err(|_| ApiError::new(400, "the CSV must be UTF-8"))?;
    let fail = query(req, "failonwarnings").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let out = lock(ctx).import_csv(text, fail)?;
    Ok(Response::created(
        json!({ "ids": out.ids, "warnings": out.warnings }),
    ))
}

/// AWS's GetUsage: `{usagePlanId, startDate, endDate, position, values: {keyId:
/// [[used, remaining], ...]}}`, one pair per day.
pub fn usage(ctx: &Ctx, req: &Request, plan: &str) -> Result<Response, ApiError> {
    let date = |name: &str| {
        let v = query(req, name)
            .ok_or_else(|| ApiError::new(400, format!("{name} is required (YYYY-MM-DD)")))?;
        crate::clock::parse_date(v)
            .ok_or_else(|| ApiError::new(400, format!("{name} must be a date as YYYY-MM-DD")))
    };
    let (start, end) = (date("startDate")?, date("endDate")?);
    if end < start {
        return Err(ApiError::new(400, "endDate is before startDate"));
    }
    if end - start >= MAX_REPORT_DAYS {
        return Err(ApiError::new(
            400,
            format!("at most {MAX_REPORT_DAYS} days at once"),
        ));
    }
    let limit: usize = match query(req, "limit") {
        None => 25,
        Some(v) => v
            .parse()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| ApiError::new(400, "limit must be 1 to 500"))?,
    };
    let position: usize = match query(req, "position") {
        None | Some("") => 0,
        Some(v) => v.parse().map_err(|_| ApiError::new(400, "bad position"))?,
    };
    // Counts reach the shared quotas on the workers' tick: wait one, so that every
    // request answered before this call is in the report.
    std::thread::sleep(TICK_WAIT);
    let report = lock(ctx).usage(plan, query(req, "keyId"), start, end)?;
    let total = report.len();
    let values = values_json(report.into_iter().skip(position).take(limit));
    let mut out = json!({
        "usagePlanId": plan,
        "startDate": crate::clock::format_date(start),
        "endDate": crate::clock::format_date(end),
        "values": values,
    });
    if position + limit < total {
        out["position"] = Value::String((position + limit).to_string());
    }
    Ok(Response::ok(out))
}

/// AWS's UpdateUsage: `{"patchOperations":[{"op":"replace","path":"/remaining",
/// "value":"N"}]}`, or simply `{"remaining": N}`.
pub fn update_usage(ctx: &Ctx, req: &Request, plan: &str, key: &str) -> Result<Response, ApiError> {
    let v: Value = body(req)?;
    let remaining = v
        .get("remaining")
        .and_then(Value::as_u64)
        .or_else(|| {
            v.get("patchOperations")?
                .as_array()?
                .iter()
                .find(|op| op.get("path").and_then(Value::as_str) == Some("/remaining"))
                .and_then(|op| {
                    let value = op.get("value")?;
                    value
                        .as_u64()
                        .or_else(|| value.as_str()?.trim().parse().ok())
                })
        })
        .ok_or_else(|| {
            ApiError::new(
                400,
                "expected {\"remaining\": N} or a patchOperations replace of /remaining",
            )
        })?;
    std::thread::sleep(TICK_WAIT);
    let today = crate::clock::unix_s() / 86_400;
    let mut reg = lock(ctx);
    reg.set_remaining(plan, key, remaining)?;
    let values = values_json(reg.usage(plan, Some(key), today, today)?);
    Ok(Response::ok(json!({
        "usagePlanId": plan,
        "startDate": crate::clock::format_date(today),
        "endDate": crate::clock::format_date(today),
        "values": values,
    })))
}
