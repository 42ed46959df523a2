//! Fake of Cloudflare's GraphQL Analytics API (`POST /client/v4/graphql`)
//! for the one dataset the daemon reads, `callsTurnUsageAdaptiveGroups`,
//! computed from the usage records a test gives the fake.
//!
//! What each part mirrors:
//!
//! - <https://developers.cloudflare.com/realtime/turn/analytics/>: the
//!   dataset under `viewer { accounts(filter: {accountTag}) }`; the metrics
//!   `sum { egressBytes ingressBytes }` and `avg { concurrentConnections }`
//!   (the page's newer example queries spell it
//!   `concurrentConnectionsFiveMinutes`, so both names are served); the
//!   dimensions `datetime`, `datetimeMinute`, `datetimeFiveMinutes`,
//!   `datetimeFifteenMinutes`, `datetimeHour`, `keyId`, `customIdentifier`,
//!   `username` and `datacenterCity/Code/Country/Region`, plus `date`, which
//!   the newer examples filter on (`date_geq`); filters on time, key,
//!   username and identifier; an answer `{"data":{"viewer":…},"errors":null}`;
//!   a credential minted without a custom identifier reported as
//!   `"customIdentifier": ""`.
//! - <https://developers.cloudflare.com/analytics/graphql-api/features/filtering/>:
//!   the account filter's three forms (`accountTag`, `accountTag_in`,
//!   `accountTag_gt`; one account per query, the filter required), a dataset
//!   filter's grammar (`k: v`, `k_op: v`, `AND: [..]`, `OR: [..]`) and its
//!   operators (`gt lt geq leq neq in` on scalars, `like` with `%` on
//!   strings). Variable types are Cloudflare's scalar names, `string`,
//!   `Time`, `Date` (that page's example declares `$zoneTag: string, $start:
//!   Time`) and `uint64` for `limit`.
//! - <https://developers.cloudflare.com/analytics/graphql-api/features/sorting/>:
//!   `orderBy: [<field>_ASC|_DESC]`, `sum_<metric>` for an aggregate, and
//!   groups otherwise (and on ties) in the order of their dimensions.
//! - <https://developers.cloudflare.com/analytics/graphql-api/errors/>: every
//!   answer has `errors`, `null` on success; an error is `{message, path,
//!   extensions: {timestamp}}` with `data: null`, and the page gives the
//!   status of each kind: `Unauthorized` 401 (token missing, expired or
//!   invalid), `not authorized for that account` 403 (the token may not read
//!   that account, or lacks the Analytics Read permission), parse errors 400
//!   (`error parsing args…`, `unknown field…`, `scalar fields must have no
//!   selections`, `object field must have selections`, `query contains
//!   error, please review it and retry`), and `limit must be positive number
//!   and not greater than…` 400. The page documents no `extensions.code`; a
//!   client's report (<https://github.com/chen2he/orange-cloud/pull/16>) saw
//!   `"code": "authz"` on the 403, so that one carries it and no other does.
//!   Where the page is silent (the body of a 401, an unparsable request
//!   body, a mutation, more than one account) the fake answers in the same
//!   shape with its own words. Clients have also reported, for a token the
//!   API refused, the REST API's envelope instead
//!   (`{"success":false,"errors":[{"code":10000,"message":"Authentication
//!   error"}]}`, <https://github.com/BeeHiveSafety/CloudflareToAbuseIPDB/issues/5>):
//!   a test plays that one with [`AnalyticsBehaviour::Status`].
//! - <https://developers.cloudflare.com/analytics/graphql-api/features/discovery/settings/>
//!   and <https://developers.cloudflare.com/analytics/graphql-api/limits/>:
//!   each dataset has a `maxPageSize`; the pages give 10 000 in their example
//!   and the TURN page's examples ask for up to `limit: 10000`, so that is
//!   [`MAX_PAGE_SIZE`]. Neither page gives the TURN dataset's `maxDuration`
//!   or `notOlderThan`, so the fake enforces no time-range bound.
//! - <https://developers.cloudflare.com/analytics/graphql-api/getting-started/authentication/graphql-client-headers/>:
//!   the token travels as `Authorization: Bearer <token>`.
//!
//! Every record is served from one data center (Frankfurt, `FRA`, `DE`,
//! `WEUR`); the fake has no zones, no `settings` node, no sampling, no
//! introspection and no directives, and says so with an error.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use graphql_parser::query::{
    Definition, Field, FragmentDefinition, OperationDefinition, Selection, SelectionSet, Type, Value,
};
use http::{HeaderMap, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};

use super::{authorized, hang, respond, status_code, utc};

/// The largest `limit` a dataset query may ask for.
pub const MAX_PAGE_SIZE: u64 = 10_000;

/// Where the API answers, on the fake's address.
pub(crate) const PATH: &str = "/client/v4/graphql";

const DATASET: &str = "callsTurnUsageAdaptiveGroups";
/// The input types of the dataset's `filter` and `orderBy`: what a variable
/// holding a whole filter or ordering must be declared as. No page names
/// them; they follow the names clients use for other account datasets
/// (`AccountWorkersInvocationsAdaptiveFilter_InputObject`,
/// `AccountWorkersInvocationsAdaptiveOrderBy`).
const FILTER_TYPE: &str = "AccountCallsTurnUsageAdaptiveGroupsFilter_InputObject";
const ORDER_TYPE: &str = "AccountCallsTurnUsageAdaptiveGroupsOrderBy";
/// The account filter's type, by the same pattern and just as unverified.
const ACCOUNT_FILTER_TYPE: &str = "AccountFilter_InputObject";

/// Fragments may include fragments; deeper than this is taken for a cycle.
const MAX_FRAGMENT_DEPTH: usize = 16;

const DATACENTER: [(Dim, &str); 4] = [
    (Dim::DatacenterCity, "Frankfurt"),
    (Dim::DatacenterCode, "FRA"),
    (Dim::DatacenterCountry, "DE"),
    (Dim::DatacenterRegion, "WEUR"),
];

/// One stretch of TURN usage, as Cloudflare would have counted it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageRecord {
    /// The TURN key the credential was minted under (dimension `keyId`).
    pub key_id: String,
    /// The TURN username (dimension `username`).
    pub username: String,
    /// The `customIdentifier` given at minting, if any; answered as `""`
    /// when absent, as Cloudflare does.
    pub custom_identifier: Option<String>,
    /// Bytes relayed to the client.
    pub egress_bytes: u64,
    /// Bytes received from the client.
    pub ingress_bytes: u64,
    /// Connections open meanwhile; `avg { concurrentConnections }` is its
    /// mean over a group's records.
    pub concurrent_connections: u64,
    /// When the usage happened (the `datetime` dimensions derive from it).
    pub at: SystemTime,
}

impl UsageRecord {
    /// Usage of one connection, now, with no custom identifier.
    pub fn new(
        key_id: impl Into<String>,
        username: impl Into<String>,
        egress_bytes: u64,
        ingress_bytes: u64,
    ) -> Self {
        Self {
            key_id: key_id.into(),
            username: username.into(),
            custom_identifier: None,
            egress_bytes,
            ingress_bytes,
            concurrent_connections: 1,
            at: SystemTime::now(),
        }
    }

    /// The same usage tagged with `customIdentifier` `id`.
    #[must_use]
    pub fn identifier(mut self, id: impl Into<String>) -> Self {
        self.custom_identifier = Some(id.into());
        self
    }

    /// The same usage at another time.
    #[must_use]
    pub fn at(mut self, at: SystemTime) -> Self {
        self.at = at;
        self
    }

    /// The same usage with `connections` concurrent connections.
    #[must_use]
    pub fn connections(mut self, connections: u64) -> Self {
        self.concurrent_connections = connections;
        self
    }
}

/// How the fake answers an analytics query that passed its checks (token,
/// account, a valid query); failed checks are answered as Cloudflare
/// answers them whatever the behaviour.
#[derive(Clone, Debug)]
pub enum AnalyticsBehaviour {
    /// `200` with the query's data, after `latency`.
    Answer { latency: Duration },
    /// This status and body, as `application/json`.
    Status { status: u16, body: String },
    /// Accept the request and never answer.
    Hang,
    /// `200` whose body is not JSON.
    Garbage,
    /// This status with a GraphQL error carrying `message`, in Cloudflare's
    /// error shape (`data: null`); a `200` is legal there.
    GraphqlError { status: u16, message: String },
}

impl Default for AnalyticsBehaviour {
    fn default() -> Self {
        Self::Answer {
            latency: Duration::ZERO,
        }
    }
}

/// Who may read what: the fake's account and analytics token.
pub(crate) struct Scope<'a> {
    pub(crate) account_id: &'a str,
    pub(crate) token: &'a str,
    /// Whether the token carries Account Analytics: Read.
    pub(crate) permitted: bool,
}

/// The answer to one `POST /client/v4/graphql`.
pub(crate) async fn serve(
    scope: &Scope<'_>,
    records: &[UsageRecord],
    behaviour: AnalyticsBehaviour,
    headers: &HeaderMap,
    body: &[u8],
) -> Response<Body> {
    let data = if authorized(headers, scope.token) {
        execute(scope, records, body)
    } else {
        Err(GqlError::new(StatusCode::UNAUTHORIZED, "Unauthorized"))
    };
    let data = match data {
        Ok(data) => data,
        Err(e) => return e.response(),
    };
    match behaviour {
        AnalyticsBehaviour::Answer { latency } => {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            let body = json!({ "data": data, "errors": null });
            respond(StatusCode::OK, "application/json", Body::from(body.to_string()))
        }
        AnalyticsBehaviour::Status { status, body } => {
            respond(status_code(status), "application/json", Body::from(body))
        }
        AnalyticsBehaviour::Hang => hang().await,
        AnalyticsBehaviour::Garbage => respond(
            StatusCode::OK,
            "application/json",
            Body::from("<html><body>upstream went away</body></html>"),
        ),
        AnalyticsBehaviour::GraphqlError { status, message } => {
            GqlError::new(status_code(status), message).response()
        }
    }
}

/// A failed query: the status and the one error of its answer.
#[derive(Debug)]
struct GqlError {
    status: StatusCode,
    message: String,
    path: Option<Vec<String>>,
    code: Option<&'static str>,
}

impl GqlError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            path: None,
            code: None,
        }
    }

    fn at(mut self, path: &[String]) -> Self {
        self.path = Some(path.to_vec());
        self
    }

    fn response(&self) -> Response<Body> {
        let mut extensions = json!({ "timestamp": utc::format_time_nanos(SystemTime::now()) });
        if let Some(code) = self.code {
            extensions["code"] = json!(code);
        }
        let body = json!({
            "data": null,
            "errors": [{ "message": self.message, "path": self.path, "extensions": extensions }],
        });
        respond(self.status, "application/json", Body::from(body.to_string()))
    }
}

fn malformed() -> GqlError {
    GqlError::new(
        StatusCode::BAD_REQUEST,
        "query contains error, please review it and retry",
    )
}

fn args(path: &[String], detail: impl std::fmt::Display) -> GqlError {
    GqlError::new(StatusCode::BAD_REQUEST, format!("error parsing args: {detail}")).at(path)
}

fn unknown_field(path: &[String], name: &str, on: &str) -> GqlError {
    GqlError::new(
        StatusCode::BAD_REQUEST,
        format!("unknown field \"{name}\" on {on}"),
    )
    .at(path)
}

fn not_authorized(path: &[String]) -> GqlError {
    GqlError {
        code: Some("authz"),
        ..GqlError::new(StatusCode::FORBIDDEN, "not authorized for that account").at(path)
    }
}

#[derive(Deserialize)]
struct GraphqlRequest {
    query: String,
    #[serde(default)]
    variables: Option<Map<String, Json>>,
    #[serde(default, rename = "operationName")]
    operation_name: Option<String>,
}

fn execute(scope: &Scope<'_>, records: &[UsageRecord], body: &[u8]) -> Result<Json, GqlError> {
    let request: GraphqlRequest = serde_json::from_slice(body).map_err(|_| malformed())?;
    let doc = graphql_parser::parse_query::<&str>(&request.query).map_err(|_| malformed())?;
    let mut operations = Vec::new();
    let mut fragments = HashMap::new();
    for definition in &doc.definitions {
        match definition {
            Definition::Operation(op) => operations.push(op),
            Definition::Fragment(f) => {
                fragments.insert(f.name, f);
            }
        }
    }
    let operation = match (&request.operation_name, operations.as_slice()) {
        (None, [only]) => *only,
        (None, _) => return Err(malformed()),
        (Some(name), _) => operations
            .iter()
            .copied()
            .find(|op| operation_name(op) == Some(name.as_str()))
            .ok_or_else(malformed)?,
    };
    let (variables, selection) = match operation {
        OperationDefinition::SelectionSet(set) => (&[][..], set),
        OperationDefinition::Query(query) if query.directives.is_empty() => {
            (query.variable_definitions.as_slice(), &query.selection_set)
        }
        _ => return Err(malformed()),
    };
    let empty = Map::new();
    let exec = Exec {
        declared: variables
            .iter()
            .map(|v| (v.name, (&v.var_type, v.default_value.as_ref())))
            .collect(),
        given: request.variables.as_ref().unwrap_or(&empty),
        fragments,
        scope,
        records,
    };
    exec.root(selection)
}

fn operation_name<'q>(op: &OperationDefinition<'q, &'q str>) -> Option<&'q str> {
    match op {
        OperationDefinition::Query(q) => q.name,
        OperationDefinition::Mutation(m) => m.name,
        OperationDefinition::Subscription(s) => s.name,
        OperationDefinition::SelectionSet(_) => None,
    }
}

type Ast<'q> = Value<'q, &'q str>;
type Node<'q> = Field<'q, &'q str>;

/// An input value: written in the query, or a variable's JSON.
#[derive(Clone, Copy)]
enum Input<'q> {
    Ast(&'q Ast<'q>),
    Json(&'q Json),
}

/// The schema type expected where a value is used.
#[derive(Clone, Copy)]
struct Ty {
    name: &'static str,
    list: bool,
}

impl Ty {
    const fn one(name: &'static str) -> Self {
        Self { name, list: false }
    }

    const fn many(name: &'static str) -> Self {
        Self { name, list: true }
    }
}

impl std::fmt::Display for Ty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.list {
            write!(f, "[{}]", self.name)
        } else {
            f.write_str(self.name)
        }
    }
}

struct Exec<'q> {
    declared: HashMap<&'q str, (&'q Type<'q, &'q str>, Option<&'q Ast<'q>>)>,
    given: &'q Map<String, Json>,
    fragments: HashMap<&'q str, &'q FragmentDefinition<'q, &'q str>>,
    scope: &'q Scope<'q>,
    records: &'q [UsageRecord],
}

impl<'q> Exec<'q> {
    fn root(&self, set: &'q SelectionSet<'q, &'q str>) -> Result<Json, GqlError> {
        let mut data = Map::new();
        for field in self.fields(set, &[])? {
            let path = vec![key(field).to_owned()];
            match field.name {
                "viewer" => {
                    no_arguments(field, &path)?;
                    data.insert(path[0].clone(), self.viewer(field, &path)?);
                }
                other => return Err(unknown_field(&path, other, "Query")),
            }
        }
        Ok(Json::Object(data))
    }

    fn viewer(&self, viewer: &'q Node<'q>, at: &[String]) -> Result<Json, GqlError> {
        let mut out = Map::new();
        for field in self.fields(&viewer.selection_set, at)? {
            let path = extend(at, key(field));
            match field.name {
                "accounts" => {
                    out.insert(key(field).to_owned(), self.accounts(field, &path)?);
                }
                other => return Err(unknown_field(&path, other, "viewer")),
            }
        }
        Ok(Json::Object(out))
    }

    fn accounts(&self, accounts: &'q Node<'q>, at: &[String]) -> Result<Json, GqlError> {
        let mut tags = None;
        for (name, value) in &accounts.arguments {
            match *name {
                "filter" => tags = Some(self.account_filter(Input::Ast(value), at)?),
                other => return Err(args(at, format!("unknown argument \"{other}\""))),
            }
        }
        let tags = tags.ok_or_else(|| args(at, "an account filter (accountTag) is required"))?;
        if tags.len() > 1 {
            return Err(args(at, "an account-scoped query can include only 1 account"));
        }
        if tags
            .iter()
            .any(|tag| !self.scope.permitted || tag != self.scope.account_id)
        {
            return Err(not_authorized(at));
        }
        let mut answer = Vec::new();
        for index in 0..tags.len() {
            let at = extend(at, &index.to_string());
            let mut account = Map::new();
            for field in self.fields(&accounts.selection_set, &at)? {
                let path = extend(&at, key(field));
                match field.name {
                    DATASET => {
                        account.insert(key(field).to_owned(), self.dataset(field, &path)?);
                    }
                    other => return Err(unknown_field(&path, other, "account")),
                }
            }
            answer.push(Json::Object(account));
        }
        Ok(Json::Array(answer))
    }

    /// The account tags the filter selects among those the token may read.
    fn account_filter(&self, value: Input<'q>, at: &[String]) -> Result<Vec<String>, GqlError> {
        let Some(value) = self.deref(value, Ty::one(ACCOUNT_FILTER_TYPE), at)? else {
            return Err(args(at, "an account filter (accountTag) is required"));
        };
        let entries = self.object(value, at)?;
        let [(name, value)] = entries.as_slice() else {
            return Err(args(
                at,
                "the account filter takes exactly one of accountTag, accountTag_in, accountTag_gt",
            ));
        };
        match *name {
            "accountTag" => Ok(self.string(*value, Ty::one("string"), at)?.into_iter().collect()),
            "accountTag_in" => self.strings(*value, at),
            "accountTag_gt" => {
                let floor = self.string(*value, Ty::one("string"), at)?;
                let readable = self.scope.account_id;
                Ok(floor
                    .filter(|floor| readable > floor.as_str())
                    .map(|_| readable.to_owned())
                    .into_iter()
                    .collect())
            }
            other => Err(args(at, format!("unknown account filter \"{other}\""))),
        }
    }

    fn dataset(&self, node: &'q Node<'q>, at: &[String]) -> Result<Json, GqlError> {
        let (mut filter, mut limit, mut order) = (Pred::All(Vec::new()), None, Vec::new());
        let plan = self.plan(node, at)?;
        for (name, value) in &node.arguments {
            let value = Input::Ast(value);
            match *name {
                "filter" => {
                    if let Some(value) = self.deref(value, Ty::one(FILTER_TYPE), at)? {
                        filter = self.filter(value, at)?;
                    }
                }
                "limit" => limit = self.uint(value, at)?,
                "orderBy" => order = self.order_by(value, &plan.dims, at)?,
                other => return Err(args(at, format!("unknown argument \"{other}\""))),
            }
        }
        let limit = limit.ok_or_else(|| args(at, "argument \"limit\" of type uint64! is required"))?;
        if limit == 0 || limit > MAX_PAGE_SIZE {
            return Err(GqlError::new(
                StatusCode::BAD_REQUEST,
                format!("limit must be positive number and not greater than {MAX_PAGE_SIZE}"),
            )
            .at(at));
        }

        let mut groups: BTreeMap<Vec<Key>, Totals> = BTreeMap::new();
        for record in self.records.iter().filter(|r| filter.holds(r)) {
            let group = plan.dims.iter().map(|d| d.key(record)).collect();
            groups.entry(group).or_default().add(record);
        }
        let mut groups: Vec<(Vec<Key>, Totals)> = groups.into_iter().collect();
        // Stable, so groups equal on every key stay in dimension order.
        groups.sort_by(|(a_dims, a), (b_dims, b)| {
            order
                .iter()
                .map(|(by, descending)| {
                    let ordering = match by {
                        OrderKey::Dim(i) => a_dims[*i].cmp(&b_dims[*i]),
                        OrderKey::Metric(m) => m.of(a).total_cmp(&m.of(b)),
                    };
                    if *descending { ordering.reverse() } else { ordering }
                })
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Ok(Json::Array(
            groups
                .iter()
                .take(limit)
                .map(|(dims, totals)| plan.render(dims, totals))
                .collect(),
        ))
    }

    /// What each group of the answer holds, from the dataset's selection.
    fn plan(&self, node: &'q Node<'q>, at: &[String]) -> Result<Plan, GqlError> {
        let mut plan = Plan::default();
        for field in self.fields(&node.selection_set, at)? {
            let path = extend(at, key(field));
            no_arguments(field, &path)?;
            let mut part = Vec::new();
            let kind = match field.name {
                "dimensions" => PartKind::Dimensions,
                "sum" => PartKind::Sum,
                "avg" => PartKind::Avg,
                other => return Err(unknown_field(&path, other, DATASET)),
            };
            for leaf in self.fields(&field.selection_set, &path)? {
                let leaf_path = extend(&path, key(leaf));
                no_arguments(leaf, &leaf_path)?;
                if !leaf.selection_set.items.is_empty() {
                    return Err(GqlError::new(
                        StatusCode::BAD_REQUEST,
                        "scalar fields must have no selections",
                    )
                    .at(&leaf_path));
                }
                let item = match kind {
                    PartKind::Dimensions => {
                        let dim = Dim::named(leaf.name)
                            .ok_or_else(|| unknown_field(&leaf_path, leaf.name, "dimensions"))?;
                        Item::Dim(plan.dim_index(dim))
                    }
                    PartKind::Sum | PartKind::Avg => Item::Metric(
                        Metric::named(kind, leaf.name)
                            .ok_or_else(|| unknown_field(&leaf_path, leaf.name, field.name))?,
                    ),
                };
                part.push((key(leaf).to_owned(), item));
            }
            plan.parts.push((key(field).to_owned(), part));
        }
        Ok(plan)
    }

    fn order_by(
        &self,
        value: Input<'q>,
        dims: &[Dim],
        at: &[String],
    ) -> Result<Vec<(OrderKey, bool)>, GqlError> {
        let mut order = Vec::new();
        for item in self.list(value, Ty::many(ORDER_TYPE), at)? {
            let Some(item) = self.deref(item, Ty::one(ORDER_TYPE), at)? else {
                continue;
            };
            let name = match item {
                Input::Ast(Value::Enum(name)) => *name,
                Input::Json(Json::String(name)) => name.as_str(),
                _ => return Err(args(at, "orderBy takes enum values such as sum_egressBytes_DESC")),
            };
            let (field, descending) = if let Some(field) = name.strip_suffix("_DESC") {
                (field, true)
            } else if let Some(field) = name.strip_suffix("_ASC") {
                (field, false)
            } else {
                return Err(args(at, format!("unknown orderBy value {name}")));
            };
            let by = if let Some(metric) = Metric::ordering(field) {
                OrderKey::Metric(metric)
            } else if let Some(i) = Dim::named(field).and_then(|d| dims.iter().position(|x| *x == d)) {
                OrderKey::Dim(i)
            } else {
                return Err(args(
                    at,
                    format!("cannot order by {name}: neither an aggregate nor a requested dimension"),
                ));
            };
            order.push((by, descending));
        }
        Ok(order)
    }

    fn filter(&self, value: Input<'q>, at: &[String]) -> Result<Pred, GqlError> {
        let mut all = Vec::new();
        for (name, value) in self.object(value, at)? {
            if let "AND" | "OR" = name {
                let mut parts = Vec::new();
                for item in self.list(value, Ty::many(FILTER_TYPE), at)? {
                    if let Some(item) = self.deref(item, Ty::one(FILTER_TYPE), at)? {
                        parts.push(self.filter(item, at)?);
                    }
                }
                all.push(if name == "AND" {
                    Pred::All(parts)
                } else {
                    Pred::Any(parts)
                });
                continue;
            }
            let (dim, op) = match name.rsplit_once('_') {
                Some((field, op)) => (field, Op::named(op)),
                None => (name, Some(Op::Eq)),
            };
            let (Some(dim), Some(op)) = (Dim::named(dim), op) else {
                return Err(args(at, format!("unknown filter \"{name}\" on {DATASET}")));
            };
            let scalar = dim.scalar();
            let operand = match op {
                Op::In => {
                    let mut keys = Vec::new();
                    for item in self.list(value, Ty::many(scalar), at)? {
                        keys.extend(self.scalar(item, dim, name, at)?);
                    }
                    Operand::Many(keys)
                }
                Op::Like if scalar != "string" => {
                    return Err(args(at, format!("{name}: like applies to strings only")));
                }
                _ => match self.scalar(value, dim, name, at)? {
                    Some(k) => Operand::One(k),
                    None => continue,
                },
            };
            all.push(Pred::Test { dim, op, operand });
        }
        Ok(Pred::All(all))
    }

    /// A filter's operand for `dim`, checked and converted.
    fn scalar(&self, value: Input<'q>, dim: Dim, name: &str, at: &[String]) -> Result<Option<Key>, GqlError> {
        let scalar = dim.scalar();
        let Some(text) = self.string(value, Ty::one(scalar), at)? else {
            return Ok(None);
        };
        let key = match scalar {
            "Time" => utc::parse_time(&text).map(Key::Num),
            "Date" => utc::parse_date(&text).map(Key::Num),
            _ => Some(Key::Str(text.clone())),
        };
        key.map(Some)
            .ok_or_else(|| args(at, format!("{name}: {text:?} is not a {scalar}")))
    }

    fn strings(&self, value: Input<'q>, at: &[String]) -> Result<Vec<String>, GqlError> {
        let mut out = Vec::new();
        for item in self.list(value, Ty::many("string"), at)? {
            out.extend(self.string(item, Ty::one("string"), at)?);
        }
        Ok(out)
    }

    /// A variable replaced by its value (checked against the type expected
    /// where it is used, as GraphQL validation does); `None` for null or an
    /// optional variable left out.
    fn deref(&self, value: Input<'q>, want: Ty, at: &[String]) -> Result<Option<Input<'q>>, GqlError> {
        let name = match value {
            Input::Ast(Value::Variable(name)) => *name,
            Input::Ast(Value::Null) | Input::Json(Json::Null) => return Ok(None),
            other => return Ok(Some(other)),
        };
        let Some((declared, default)) = self.declared.get(name) else {
            return Err(args(at, format!("variable ${name} is not declared")));
        };
        if !fits(declared, want) {
            return Err(args(
                at,
                format!("variable ${name} of type {declared} is used where {want} is expected"),
            ));
        }
        match (self.given.get(name), default) {
            (Some(Json::Null) | None, Some(default)) => self.deref(Input::Ast(default), want, at),
            (Some(Json::Null) | None, None) if matches!(declared, Type::NonNullType(_)) => Err(args(
                at,
                format!("variable ${name} of type {declared} was not provided"),
            )),
            (Some(Json::Null) | None, None) => Ok(None),
            (Some(given), _) => Ok(Some(Input::Json(given))),
        }
    }

    fn string(&self, value: Input<'q>, want: Ty, at: &[String]) -> Result<Option<String>, GqlError> {
        match self.deref(value, want, at)? {
            None => Ok(None),
            Some(Input::Ast(Value::String(s))) => Ok(Some(s.clone())),
            Some(Input::Json(Json::String(s))) => Ok(Some(s.clone())),
            Some(_) => Err(args(at, format!("expected a {want}"))),
        }
    }

    fn uint(&self, value: Input<'q>, at: &[String]) -> Result<Option<u64>, GqlError> {
        let number = match self.deref(value, Ty::one("uint64"), at)? {
            None => return Ok(None),
            Some(Input::Ast(Value::Int(n))) => n.as_i64().and_then(|n| u64::try_from(n).ok()),
            Some(Input::Json(j)) => j.as_u64(),
            Some(_) => None,
        };
        number.map(Some).ok_or_else(|| args(at, "expected a uint64"))
    }

    /// A list's items; a single value stands for a list of one, as GraphQL
    /// input coercion has it.
    fn list(&self, value: Input<'q>, want: Ty, at: &[String]) -> Result<Vec<Input<'q>>, GqlError> {
        Ok(match self.deref(value, want, at)? {
            None => Vec::new(),
            Some(Input::Ast(Value::List(items))) => items.iter().map(Input::Ast).collect(),
            Some(Input::Json(Json::Array(items))) => items.iter().map(Input::Json).collect(),
            Some(one) => vec![one],
        })
    }

    fn object(&self, value: Input<'q>, at: &[String]) -> Result<Vec<(&'q str, Input<'q>)>, GqlError> {
        match value {
            Input::Ast(Value::Object(fields)) => {
                Ok(fields.iter().map(|(k, v)| (*k, Input::Ast(v))).collect())
            }
            Input::Json(Json::Object(fields)) => {
                Ok(fields.iter().map(|(k, v)| (k.as_str(), Input::Json(v))).collect())
            }
            _ => Err(args(at, "expected an input object")),
        }
    }

    /// The fields of a selection, fragments expanded; an object field with
    /// no selection is refused, as Cloudflare refuses it.
    fn fields(
        &self,
        set: &'q SelectionSet<'q, &'q str>,
        at: &[String],
    ) -> Result<Vec<&'q Node<'q>>, GqlError> {
        if set.items.is_empty() {
            return Err(GqlError::new(StatusCode::BAD_REQUEST, "object field must have selections").at(at));
        }
        let mut out = Vec::new();
        self.collect(set, at, 0, &mut out)?;
        Ok(out)
    }

    fn collect(
        &self,
        set: &'q SelectionSet<'q, &'q str>,
        at: &[String],
        depth: usize,
        out: &mut Vec<&'q Node<'q>>,
    ) -> Result<(), GqlError> {
        if depth > MAX_FRAGMENT_DEPTH {
            return Err(malformed().at(at));
        }
        for item in &set.items {
            let (directives, nested) = match item {
                Selection::Field(field) => {
                    if !field.directives.is_empty() {
                        return Err(args(at, "directives are not supported"));
                    }
                    out.push(field);
                    continue;
                }
                Selection::FragmentSpread(spread) => {
                    let fragment = self
                        .fragments
                        .get(spread.fragment_name)
                        .ok_or_else(|| args(at, format!("unknown fragment {}", spread.fragment_name)))?;
                    (&spread.directives, &fragment.selection_set)
                }
                Selection::InlineFragment(inline) => (&inline.directives, &inline.selection_set),
            };
            if !directives.is_empty() {
                return Err(args(at, "directives are not supported"));
            }
            self.collect(nested, at, depth + 1, out)?;
        }
        Ok(())
    }
}

/// The answer's key for a field: its alias, else its name.
fn key<'q>(field: &Node<'q>) -> &'q str {
    field.alias.unwrap_or(field.name)
}

fn extend(path: &[String], more: &str) -> Vec<String> {
    let mut path = path.to_vec();
    path.push(more.to_owned());
    path
}

fn no_arguments(field: &Node<'_>, at: &[String]) -> Result<(), GqlError> {
    match field.arguments.first() {
        None => Ok(()),
        Some((name, _)) => Err(args(at, format!("unknown argument \"{name}\""))),
    }
}

/// Whether a variable declared `declared` may stand where `want` is expected:
/// the same named type and list-ness; a non-null declaration fits a nullable
/// place.
fn fits<'q>(declared: &Type<'q, &'q str>, want: Ty) -> bool {
    fn nullable<'a, 'q>(t: &'a Type<'q, &'q str>) -> &'a Type<'q, &'q str> {
        match t {
            Type::NonNullType(inner) => inner,
            other => other,
        }
    }
    match (nullable(declared), want.list) {
        (Type::NamedType(name), false) => *name == want.name,
        (Type::ListType(item), true) => {
            matches!(nullable(item), Type::NamedType(name) if *name == want.name)
        }
        _ => false,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dim {
    Datetime,
    DatetimeMinute,
    DatetimeFiveMinutes,
    DatetimeFifteenMinutes,
    DatetimeHour,
    Date,
    KeyId,
    Username,
    CustomIdentifier,
    DatacenterCity,
    DatacenterCode,
    DatacenterCountry,
    DatacenterRegion,
}

const DIMS: [(&str, Dim); 13] = [
    ("datetime", Dim::Datetime),
    ("datetimeMinute", Dim::DatetimeMinute),
    ("datetimeFiveMinutes", Dim::DatetimeFiveMinutes),
    ("datetimeFifteenMinutes", Dim::DatetimeFifteenMinutes),
    ("datetimeHour", Dim::DatetimeHour),
    ("date", Dim::Date),
    ("keyId", Dim::KeyId),
    ("username", Dim::Username),
    ("customIdentifier", Dim::CustomIdentifier),
    ("datacenterCity", Dim::DatacenterCity),
    ("datacenterCode", Dim::DatacenterCode),
    ("datacenterCountry", Dim::DatacenterCountry),
    ("datacenterRegion", Dim::DatacenterRegion),
];

impl Dim {
    fn named(name: &str) -> Option<Self> {
        DIMS.iter().find(|(n, _)| *n == name).map(|(_, d)| *d)
    }

    /// The GraphQL scalar of its values.
    fn scalar(self) -> &'static str {
        match self {
            Self::Datetime
            | Self::DatetimeMinute
            | Self::DatetimeFiveMinutes
            | Self::DatetimeFifteenMinutes
            | Self::DatetimeHour => "Time",
            Self::Date => "Date",
            _ => "string",
        }
    }

    fn key(self, record: &UsageRecord) -> Key {
        let seconds = utc::unix_seconds(record.at);
        let floor = |step: i64| Key::Num(seconds - seconds.rem_euclid(step));
        match self {
            Self::Datetime => Key::Num(seconds),
            Self::DatetimeMinute => floor(60),
            Self::DatetimeFiveMinutes => floor(300),
            Self::DatetimeFifteenMinutes => floor(900),
            Self::DatetimeHour => floor(3600),
            Self::Date => Key::Num(seconds.div_euclid(86_400)),
            Self::KeyId => Key::Str(record.key_id.clone()),
            Self::Username => Key::Str(record.username.clone()),
            Self::CustomIdentifier => Key::Str(record.custom_identifier.clone().unwrap_or_default()),
            datacenter => Key::Str(
                DATACENTER
                    .iter()
                    .find(|(d, _)| *d == datacenter)
                    .map_or_else(String::new, |(_, v)| (*v).to_owned()),
            ),
        }
    }

    fn render(self, key: &Key) -> Json {
        match (self.scalar(), key) {
            ("Time", Key::Num(seconds)) => json!(utc::format_time(*seconds)),
            ("Date", Key::Num(days)) => json!(utc::format_date(*days)),
            (_, Key::Num(n)) => json!(n),
            (_, Key::Str(s)) => json!(s),
        }
    }
}

/// A record's value of one dimension: seconds or days for times and dates.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Num(i64),
    Str(String),
}

#[derive(Clone, Copy)]
enum Op {
    Eq,
    Neq,
    Gt,
    Lt,
    Geq,
    Leq,
    In,
    Like,
}

impl Op {
    fn named(name: &str) -> Option<Self> {
        Some(match name {
            "neq" => Self::Neq,
            "gt" => Self::Gt,
            "lt" => Self::Lt,
            "geq" => Self::Geq,
            "leq" => Self::Leq,
            "in" => Self::In,
            "like" => Self::Like,
            _ => return None,
        })
    }
}

enum Operand {
    One(Key),
    Many(Vec<Key>),
}

enum Pred {
    All(Vec<Pred>),
    Any(Vec<Pred>),
    Test { dim: Dim, op: Op, operand: Operand },
}

impl Pred {
    fn holds(&self, record: &UsageRecord) -> bool {
        match self {
            Self::All(parts) => parts.iter().all(|p| p.holds(record)),
            Self::Any(parts) => parts.iter().any(|p| p.holds(record)),
            Self::Test { dim, op, operand } => {
                let value = dim.key(record);
                match (op, operand) {
                    (Op::In, Operand::Many(keys)) => keys.contains(&value),
                    (Op::Like, Operand::One(Key::Str(pattern))) => {
                        matches!(&value, Key::Str(s) if like(pattern, s))
                    }
                    (Op::Eq, Operand::One(k)) => value == *k,
                    (Op::Neq, Operand::One(k)) => value != *k,
                    (Op::Gt, Operand::One(k)) => value > *k,
                    (Op::Lt, Operand::One(k)) => value < *k,
                    (Op::Geq, Operand::One(k)) => value >= *k,
                    (Op::Leq, Operand::One(k)) => value <= *k,
                    _ => false,
                }
            }
        }
    }
}

/// SQL `LIKE` with `%` for any run of characters.
fn like(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('%');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[derive(Clone, Copy)]
enum PartKind {
    Dimensions,
    Sum,
    Avg,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Metric {
    EgressBytes,
    IngressBytes,
    ConcurrentConnections,
}

impl Metric {
    fn named(kind: PartKind, name: &str) -> Option<Self> {
        match (kind, name) {
            (PartKind::Sum, "egressBytes") => Some(Self::EgressBytes),
            (PartKind::Sum, "ingressBytes") => Some(Self::IngressBytes),
            (PartKind::Avg, "concurrentConnections" | "concurrentConnectionsFiveMinutes") => {
                Some(Self::ConcurrentConnections)
            }
            _ => None,
        }
    }

    /// The metric an `orderBy` value names, without its `_ASC`/`_DESC`.
    fn ordering(field: &str) -> Option<Self> {
        let (kind, name) = field.split_once('_')?;
        match kind {
            "sum" => Self::named(PartKind::Sum, name),
            "avg" => Self::named(PartKind::Avg, name),
            _ => None,
        }
    }

    fn of(self, totals: &Totals) -> f64 {
        match self {
            // Exact below 2^53 bytes, far above what a test adds up.
            Self::EgressBytes => totals.egress as f64,
            Self::IngressBytes => totals.ingress as f64,
            Self::ConcurrentConnections => totals.average_connections(),
        }
    }

    fn render(self, totals: &Totals) -> Json {
        match self {
            Self::EgressBytes => json!(totals.egress),
            Self::IngressBytes => json!(totals.ingress),
            Self::ConcurrentConnections if totals.connections.checked_rem(totals.records) == Some(0) => {
                json!(totals.connections / totals.records)
            }
            Self::ConcurrentConnections => json!(totals.average_connections()),
        }
    }
}

#[derive(Default)]
struct Totals {
    egress: u64,
    ingress: u64,
    connections: u64,
    records: u64,
}

impl Totals {
    fn add(&mut self, record: &UsageRecord) {
        self.egress = self.egress.saturating_add(record.egress_bytes);
        self.ingress = self.ingress.saturating_add(record.ingress_bytes);
        self.connections = self.connections.saturating_add(record.concurrent_connections);
        self.records += 1;
    }

    fn average_connections(&self) -> f64 {
        self.connections as f64 / self.records as f64
    }
}

enum OrderKey {
    /// Index into the plan's dimensions.
    Dim(usize),
    Metric(Metric),
}

enum Item {
    /// Index into the plan's dimensions.
    Dim(usize),
    Metric(Metric),
}

/// A dataset field's selection: the dimensions the groups are keyed on, and
/// each answer key with what it holds.
#[derive(Default)]
struct Plan {
    dims: Vec<Dim>,
    parts: Vec<(String, Vec<(String, Item)>)>,
}

impl Plan {
    fn dim_index(&mut self, dim: Dim) -> usize {
        self.dims.iter().position(|d| *d == dim).unwrap_or_else(|| {
            self.dims.push(dim);
            self.dims.len() - 1
        })
    }

    fn render(&self, dims: &[Key], totals: &Totals) -> Json {
        let mut group = Map::new();
        for (part_key, items) in &self.parts {
            let mut part = Map::new();
            for (item_key, item) in items {
                let value = match item {
                    Item::Dim(i) => self.dims[*i].render(&dims[*i]),
                    Item::Metric(m) => m.render(totals),
                };
                part.insert(item_key.clone(), value);
            }
            group.insert(part_key.clone(), Json::Object(part));
        }
        Json::Object(group)
    }
}

#[cfg(test)]
mod tests {
    use super::like;

    #[test]
    fn like_matches_percent_as_any_run() {
        assert!(like("alice", "alice"));
        assert!(!like("alice", "alice2"));
        assert!(like("@%:example.org", "@alice:example.org"));
        assert!(like("%", ""));
        assert!(like("a%b%c", "aXbYc"));
        assert!(!like("a%b%c", "aXcYb"));
        assert!(!like("ab%ba", "aba"));
    }
}
