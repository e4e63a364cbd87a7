#!/usr/bin/env bash
# Podium on Google Cloud: one-time setup of the daemon's project, then build and deploy.
#
# Usage:
#   deploy/setup.sh [PROJECT_ID [REGION [MODE]]]
#   PROJECT_ID=my-project REGION=europe-west1 MODE=pull deploy/setup.sh
#
#   PROJECT_ID          required
#   REGION              Cloud Run / Artifact Registry region (default europe-west1)
#   MODE                pull (default; deploy/service.yaml) or push (deploy/service-push.yaml)
# Optional environment:
#   IMAGE               image to deploy (default REGION-docker.pkg.dev/PROJECT_ID/podium/podium:<UTC time>)
#   SKIP_BUILD=1        deploy IMAGE as it is, without Cloud Build
#   FIRESTORE_LOCATION  location of the (default) database if it has to be created (default REGION)
#   STEPS               comma-separated subset of: apis,accounts,pubsub,firestore,indexes,build,deploy
#                       (default: all of them, in that order)
#   DATA_ROLES          comma-separated subset of secrets,buckets,bigquery: let the daemon set IAM on
#                       those resources (only if the architectures use them; default none)
#
# Every step is idempotent: a resource is described first and created only if missing, an IAM
# binding that is already there is a no-op, and a subscription that exists is converged to the
# policies below. Run it again after a change; run it as a project owner (or equivalent).
#
# Names are daemon/config.py's defaults (DESIGN.md section 3): topics podium-commands,
# podium-events, podium-dead-letter and Cloud Build's cloud-builds; subscriptions <topic>-podium;
# Firestore collection orchestrations. The daemon creates the same topics and subscriptions if they are missing
# (daemon/pubsub.py ensure_daemon_plumbing), with the same policies as here.
#
# Firestore single-field indexes are automatic and cover the other queries the code makes
# (wake_at <= now on runs, received_at order on events, project == on the local registry);
# deploy/firestore.indexes.json holds the composite ones.
set -euo pipefail

PROJECT_ID="${1:-${PROJECT_ID:-}}"
REGION="${2:-${REGION:-europe-west1}}"
MODE="${3:-${MODE:-pull}}"
FIRESTORE_LOCATION="${FIRESTORE_LOCATION:-$REGION}"
STEPS="${STEPS:-apis,accounts,pubsub,firestore,indexes,build,deploy}"
SKIP_BUILD="${SKIP_BUILD:-0}"

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/.." && pwd)"

# ---- names (daemon/config.py defaults; tests/unit/test_deploy_packaging.py checks them) --------
COMMANDS_TOPIC="podium-commands"
EVENTS_TOPIC="podium-events"
DEAD_LETTER_TOPIC="podium-dead-letter"
SUBSCRIPTION_SUFFIX="-podium"
COMMANDS_SUBSCRIPTION="${COMMANDS_TOPIC}${SUBSCRIPTION_SUFFIX}"
EVENTS_SUBSCRIPTION="${EVENTS_TOPIC}${SUBSCRIPTION_SUFFIX}"
DEAD_LETTER_SUBSCRIPTION="${DEAD_LETTER_TOPIC}${SUBSCRIPTION_SUFFIX}"
# Cloud Build publishes build status changes on this topic (DESIGN.md section 6); the daemon
# consumes it in gcp mode (Settings.cloud_builds_topic).
CLOUD_BUILDS_TOPIC="cloud-builds"
CLOUD_BUILDS_SUBSCRIPTION="${CLOUD_BUILDS_TOPIC}${SUBSCRIPTION_SUFFIX}"

# Subscription policies (Settings.max_delivery_attempts, Settings.ack_deadline_seconds, and the
# retry policy of daemon/pubsub.py ensure_subscription).
MAX_DELIVERY_ATTEMPTS=20
ACK_DEADLINE=60
MIN_RETRY_DELAY="1s"
MAX_RETRY_DELAY="60s"
# Settings.events_ordering (PODIUM_EVENTS_ORDERING): off by default, see the README's "Why
# events are not ordered". Set EVENTS_ORDERING=yes together with PODIUM_EVENTS_ORDERING=1.
EVENTS_ORDERING="${EVENTS_ORDERING:-no}"

SERVICE="podium-daemon"
DAEMON_SA_NAME="podium-daemon"
# The account Cloud Build runs Podium's builds as (Settings.build_service_account's default).
BUILDER_SA_NAME="podium-builder"
# The only project roles Podium's IAM plan ever grants (machines/iam_grants.py PROJECT_ROLES;
# tests/unit/test_deploy_packaging.py keeps the two equal): projectIamAdmin is conditioned on them.
PLAN_PROJECT_ROLES="roles/bigquery.dataEditor roles/cloudscheduler.admin roles/datastore.owner roles/datastore.user roles/datastore.viewer roles/pubsub.editor roles/storage.admin"
# Roles for IAM on data resources, granted only when the architectures use them (comma-separated
# subset of secrets,buckets,bigquery): each lets the daemon edit policies of that kind.
DATA_ROLES="${DATA_ROLES:-}"
PUSH_SA_NAME="podium-push"
AR_REPOSITORY="podium"
INDEXES_FILE="$HERE/firestore.indexes.json"

APIS=(
  run.googleapis.com
  pubsub.googleapis.com
  firestore.googleapis.com
  iam.googleapis.com
  cloudresourcemanager.googleapis.com
  cloudbuild.googleapis.com
  artifactregistry.googleapis.com
  secretmanager.googleapis.com
  storage.googleapis.com
)

# ---- helpers -----------------------------------------------------------------------------------
log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'setup.sh: %s\n' "$*" >&2; exit 1; }

usage() {
  sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# Every gcloud call goes to PROJECT_ID, without prompts.
gc() { gcloud "$@" --project="$PROJECT_ID" --quiet; }

# exists <gcloud describe command...>: true if the resource is there.
exists() { gc "$@" >/dev/null 2>&1; }

# retry <command...>: new service accounts take a while to be visible to IAM (eventually
# consistent); retry with exponential backoff, 5 attempts.
retry() {
  local attempt=1
  until "$@"; do
    if ((attempt >= 5)); then
      return 1
    fi
    log "retrying in $((2 ** attempt)) s: $*"
    sleep "$((2 ** attempt))"
    attempt=$((attempt + 1))
  done
}

want() { [[ ",$STEPS," == *",$1,"* ]]; }

[[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && usage
[[ -n "$PROJECT_ID" ]] || { printf 'setup.sh: PROJECT_ID is required\n\n' >&2; usage; }
[[ "$PROJECT_ID" =~ ^[a-z][-a-z0-9.:]*[a-z0-9]$ ]] || die "not a project id: $PROJECT_ID"
[[ "$MODE" == "pull" || "$MODE" == "push" ]] || die "MODE must be pull or push, not $MODE"
command -v gcloud >/dev/null || die "gcloud is not installed (https://cloud.google.com/sdk/docs/install)"

DAEMON_SA="${DAEMON_SA_NAME}@${PROJECT_ID}.iam.gserviceaccount.com"
BUILDER_SA="${BUILDER_SA_NAME}@${PROJECT_ID}.iam.gserviceaccount.com"
PUSH_SA="${PUSH_SA_NAME}@${PROJECT_ID}.iam.gserviceaccount.com"
# Must equal the custom audience and PODIUM_PUSH_AUDIENCE in deploy/service-push.yaml.
PUSH_AUDIENCE="podium-push.${PROJECT_ID}"
BUILD_BUCKET="gs://${PROJECT_ID}_cloudbuild"
IMAGE="${IMAGE:-${REGION}-docker.pkg.dev/${PROJECT_ID}/${AR_REPOSITORY}/podium:$(date -u +%Y%m%d-%H%M%S)}"
if [[ "$MODE" == "push" ]]; then
  SPEC="$HERE/service-push.yaml"
else
  SPEC="$HERE/service.yaml"
fi

WORK_DIR="$(mktemp -d)"
trap 'rm -rf "$WORK_DIR"' EXIT

PROJECT_NUMBER=""
project_number() {
  if [[ -z "$PROJECT_NUMBER" ]]; then
    PROJECT_NUMBER="$(gc projects describe "$PROJECT_ID" --format='value(projectNumber)')"
    [[ -n "$PROJECT_NUMBER" ]] || die "cannot read the project number of $PROJECT_ID"
  fi
  printf '%s' "$PROJECT_NUMBER"
}

# The Pub/Sub service agent: it moves messages to the dead-letter topic and signs push tokens.
pubsub_agent() { printf 'service-%s@gcp-sa-pubsub.iam.gserviceaccount.com' "$(project_number)"; }

ensure_service_account() {
  local name=$1 display=$2
  local email="${name}@${PROJECT_ID}.iam.gserviceaccount.com"
  if exists iam service-accounts describe "$email"; then
    log "service account $email exists"
  else
    log "creating service account $email"
    gc iam service-accounts create "$name" --display-name="$display"
  fi
}

grant_project() {
  local member=$1 role=$2
  log "granting $role to $member on project $PROJECT_ID"
  retry gc projects add-iam-policy-binding "$PROJECT_ID" \
    --member="$member" --role="$role" --condition=None >/dev/null
}

# grant_project_if <member> <role> <title> <CEL expression>: a conditional project binding.
grant_project_if() {
  local member=$1 role=$2 title=$3 expression=$4
  local file="$WORK_DIR/condition-$title.yaml"
  printf 'title: %s\nexpression: "%s"\n' "$title" "$expression" > "$file"
  log "granting $role to $member on project $PROJECT_ID (condition $title)"
  retry gc projects add-iam-policy-binding "$PROJECT_ID" \
    --member="$member" --role="$role" --condition-from-file="$file" >/dev/null
}

# grant_account <member> <role> <account email>: a binding on one service account only.
grant_account() {
  local member=$1 role=$2 account=$3
  log "granting $role to $member on $account"
  retry gc iam service-accounts add-iam-policy-binding "$account" \
    --member="$member" --role="$role" >/dev/null
}

# The CEL list of PLAN_PROJECT_ROLES: ['roles/a', 'roles/b', ...]
plan_roles_cel() {
  local out="" role
  for role in $PLAN_PROJECT_ROLES; do out+="${out:+, }'$role'"; done
  printf '[%s]' "$out"
}

ensure_topic() {
  local topic=$1
  if exists pubsub topics describe "$topic"; then
    log "topic $topic exists"
  else
    log "creating topic $topic"
    gc pubsub topics create "$topic"
  fi
}

# ensure_subscription SUBSCRIPTION TOPIC ORDERED(yes|no) DEAD_LETTER(yes|no) [PUSH_ENDPOINT]
# Without PUSH_ENDPOINT the subscription is a pull subscription (an existing push one is turned
# back into pull). An existing subscription is converged to the policies; message ordering is
# fixed at creation, so a missing one is reported and the script stops.
ensure_subscription() {
  local sub=$1 topic=$2 ordered=$3 dead_letter=$4 endpoint=${5:-}
  local policy=(--ack-deadline="$ACK_DEADLINE" --min-retry-delay="$MIN_RETRY_DELAY" --max-retry-delay="$MAX_RETRY_DELAY")
  if [[ "$dead_letter" == "yes" ]]; then
    policy+=(--dead-letter-topic="$DEAD_LETTER_TOPIC" --max-delivery-attempts="$MAX_DELIVERY_ATTEMPTS")
  fi
  local push=()
  if [[ -n "$endpoint" ]]; then
    push=(--push-endpoint="$endpoint" --push-auth-service-account="$PUSH_SA" --push-auth-token-audience="$PUSH_AUDIENCE")
  fi
  if exists pubsub subscriptions describe "$sub"; then
    log "subscription $sub exists: converging its policies"
    gc pubsub subscriptions update "$sub" "${policy[@]}" ${push[@]+"${push[@]}"}
    if [[ -z "$endpoint" && -n "$(gc pubsub subscriptions describe "$sub" --format='value(pushConfig.pushEndpoint)')" ]]; then
      log "subscription $sub was a push subscription: making it a pull subscription"
      gc pubsub subscriptions modify-push-config "$sub" --push-endpoint=""
    fi
    if [[ "$ordered" == "yes" ]]; then
      local ordering
      ordering="$(gc pubsub subscriptions describe "$sub" --format='value(enableMessageOrdering)')"
      [[ "$ordering" == [Tt]rue ]] ||
        die "subscription $sub has no message ordering, which cannot be turned on later: delete it and run again"
    fi
  else
    local create=(--topic="$topic")
    if [[ "$ordered" == "yes" ]]; then
      create+=(--enable-message-ordering)
    fi
    log "creating subscription $sub on $topic"
    gc pubsub subscriptions create "$sub" "${create[@]}" "${policy[@]}" ${push[@]+"${push[@]}"}
  fi
}

# Dead-lettering needs the Pub/Sub service agent to publish to the dead-letter topic and to
# subscribe to (ack from) each subscription that has a dead-letter policy.
grant_dead_letter_rights() {
  local agent
  agent="serviceAccount:$(pubsub_agent)"
  log "granting the Pub/Sub service agent its dead-letter rights"
  retry gc pubsub topics add-iam-policy-binding "$DEAD_LETTER_TOPIC" \
    --member="$agent" --role=roles/pubsub.publisher >/dev/null
  local sub
  for sub in "$COMMANDS_SUBSCRIPTION" "$EVENTS_SUBSCRIPTION" "$CLOUD_BUILDS_SUBSCRIPTION"; do
    retry gc pubsub subscriptions add-iam-policy-binding "$sub" \
      --member="$agent" --role=roles/pubsub.subscriber >/dev/null
  done
}

# The daemon's four subscriptions (daemon/pubsub.py ensure_daemon_plumbing, gcp backend), pull
# (no endpoint) or push (endpoint: daemon/http.py routes all four).
ensure_daemon_subscriptions() {
  local endpoint=${1:-}
  ensure_subscription "$DEAD_LETTER_SUBSCRIPTION" "$DEAD_LETTER_TOPIC" no no "$endpoint"
  ensure_subscription "$COMMANDS_SUBSCRIPTION" "$COMMANDS_TOPIC" no yes "$endpoint"
  ensure_subscription "$EVENTS_SUBSCRIPTION" "$EVENTS_TOPIC" "$EVENTS_ORDERING" yes "$endpoint"
  ensure_subscription "$CLOUD_BUILDS_SUBSCRIPTION" "$CLOUD_BUILDS_TOPIC" no yes "$endpoint"
  grant_dead_letter_rights
}

# ---- steps -------------------------------------------------------------------------------------
step_apis() {
  log "enabling APIs: ${APIS[*]}"
  gc services enable "${APIS[@]}"
  # Make sure the Pub/Sub service agent exists before it is granted anything.
  if ! gc beta services identity create --service=pubsub.googleapis.com >/dev/null 2>&1; then
    log "note: could not create the Pub/Sub service identity (needs the gcloud beta component); it normally exists once the API is enabled"
  fi
}

step_accounts() {
  ensure_service_account "$DAEMON_SA_NAME" "Podium daemon"
  ensure_service_account "$BUILDER_SA_NAME" "Podium builds"
  local sa="serviceAccount:$DAEMON_SA" builder="serviceAccount:$BUILDER_SA"
  # Firestore: run documents, their events/effects, rejected_messages; transactions.
  grant_project "$sa" roles/datastore.user
  # Pub/Sub: creates its own topics/subscriptions and the director's command topic, publishes and pulls, AND sets topic/subscription IAM policies for the architecture (handlers/iam/gcp.py); roles/pubsub.editor has no setIamPolicy.
  grant_project "$sa" roles/pubsub.admin
  # Creates the architecture's service accounts, and grants itself serviceAccountUser on each one it creates (so it needs that role on no other account).
  grant_project "$sa" roles/iam.serviceAccountAdmin
  # Grants the architecture's project roles: only those the IAM plan can grant (PLAN_PROJECT_ROLES), never owner, editor or an admin of IAM.
  grant_project_if "$sa" roles/resourcemanager.projectIamAdmin podium-plan-roles \
    "api.getAttribute('iam.googleapis.com/modifiedGrantsByRole', []).hasOnly($(plan_roles_cel))"
  # Deploys the architecture's Cloud Run services and grants run.invoker on them (run.developer cannot set IAM).
  grant_project "$sa" roles/run.admin
  # Starts Cloud Builds for the architecture's services and reads their status.
  grant_project "$sa" roles/cloudbuild.builds.editor
  # Lists images already built from the same sources (they are reused, not rebuilt).
  grant_project "$sa" roles/artifactregistry.reader
  ensure_repository_creator_role
  # Creates the Artifact Registry repository an image goes to, and nothing else there (custom role).
  grant_project "$sa" "projects/$PROJECT_ID/roles/podiumRepositoryCreator"
  # Builds run as the builder account: the daemon may act as that one account only.
  grant_account "$sa" roles/iam.serviceAccountUser "$BUILDER_SA"

  local role
  for role in ${DATA_ROLES//,/ }; do
    case "$role" in
      # Grants secretAccessor on the secrets services read (the only predefined role with secrets.setIamPolicy).
      secrets) grant_project "$sa" roles/secretmanager.admin ;;
      # Grants object roles on the architecture's buckets (bucket setIamPolicy is in storage.admin only).
      buckets) grant_project "$sa" roles/storage.admin ;;
      # Grants data roles on the architecture's BigQuery tables and datasets (setIamPolicy on tables).
      bigquery) grant_project "$sa" roles/bigquery.dataOwner ;;
      *) die "DATA_ROLES: unknown $role (expected secrets, buckets, bigquery)" ;;
    esac
  done

  # The builder: pushes images, writes build logs (CLOUD_LOGGING_ONLY), reads the uploaded sources.
  # Pushes the built images to Artifact Registry.
  grant_project "$builder" roles/artifactregistry.writer
  # Writes its build logs to Cloud Logging (builds use CLOUD_LOGGING_ONLY).
  grant_project "$builder" roles/logging.logWriter

  # Build sources are uploaded to gs://<project>_cloudbuild/source/ (handlers/image_builds): storage.admin on that bucket only; the builder reads them.
  if exists storage buckets describe "$BUILD_BUCKET"; then
    log "bucket $BUILD_BUCKET exists"
  else
    log "creating bucket $BUILD_BUCKET"
    gc storage buckets create "$BUILD_BUCKET" --location="$REGION" --uniform-bucket-level-access
  fi
  log "granting roles/storage.admin on $BUILD_BUCKET to $DAEMON_SA"
  retry gc storage buckets add-iam-policy-binding "$BUILD_BUCKET" \
    --member="$sa" --role=roles/storage.admin >/dev/null
  log "granting roles/storage.objectViewer on $BUILD_BUCKET to $BUILDER_SA"
  retry gc storage buckets add-iam-policy-binding "$BUILD_BUCKET" \
    --member="$builder" --role=roles/storage.objectViewer >/dev/null

  if [[ "$MODE" == "push" ]]; then
    # The identity Pub/Sub signs push requests with; it gets run.invoker on the daemon's service only.
    ensure_service_account "$PUSH_SA_NAME" "Podium Pub/Sub push"
    # The Pub/Sub service agent mints tokens for it (needed on projects created before 2021-04-08).
    retry gc iam service-accounts add-iam-policy-binding "$PUSH_SA" \
      --member="serviceAccount:$(pubsub_agent)" --role=roles/iam.serviceAccountTokenCreator >/dev/null
  fi
}

ensure_repository_creator_role() {
  if exists iam roles describe podiumRepositoryCreator; then
    log "role podiumRepositoryCreator exists"
  else
    log "creating role podiumRepositoryCreator"
    gc iam roles create podiumRepositoryCreator --title="Podium repository creator" \
      --permissions=artifactregistry.repositories.create,artifactregistry.repositories.get
  fi
}

step_pubsub() {
  local topic
  for topic in "$COMMANDS_TOPIC" "$EVENTS_TOPIC" "$DEAD_LETTER_TOPIC" "$CLOUD_BUILDS_TOPIC"; do
    ensure_topic "$topic"
  done
  if [[ "$MODE" == "pull" ]]; then
    ensure_daemon_subscriptions
  else
    log "push mode: the daemon's subscriptions are created after the deploy (they need its URL)"
  fi
}

step_firestore() {
  if exists firestore databases describe --database='(default)'; then
    log "Firestore database (default) exists"
  else
    log "creating the Firestore database (default), native mode, in $FIRESTORE_LOCATION"
    gc firestore databases create --database='(default)' --location="$FIRESTORE_LOCATION" --type=firestore-native
  fi
}

# One line per composite index of deploy/firestore.indexes.json, tab-separated gcloud flags.
index_flags() {
  python3 - "$INDEXES_FILE" <<'PY'
import json
import sys

scopes = {"COLLECTION": "collection", "COLLECTION_GROUP": "collection-group"}
for index in json.load(open(sys.argv[1], encoding="utf-8"))["indexes"]:
    flags = [f"--collection-group={index['collectionGroup']}", f"--query-scope={scopes[index['queryScope']]}"]
    for field in index["fields"]:
        flags.append(f"--field-config=field-path={field['fieldPath']},order={field['order'].lower()}")
    print("\t".join(flags))
PY
}

step_indexes() {
  command -v python3 >/dev/null || die "python3 is needed to read $INDEXES_FILE"
  local flags=() out
  while IFS=$'\t' read -r -a flags; do
    log "composite index ${flags[*]}"
    if out="$(gc firestore indexes composite create --database='(default)' "${flags[@]}" 2>&1)"; then
      log "index created"
    elif grep -qiE 'already exists|ALREADY_EXISTS' <<<"$out"; then
      log "index exists"
    else
      printf '%s\n' "$out" >&2
      die "could not create the index ${flags[*]}"
    fi
  done < <(index_flags)
}

step_build() {
  if [[ "$SKIP_BUILD" == "1" ]]; then
    log "SKIP_BUILD=1: deploying $IMAGE as it is"
    return
  fi
  if exists artifacts repositories describe "$AR_REPOSITORY" --location="$REGION"; then
    log "Artifact Registry repository $AR_REPOSITORY exists"
  else
    log "creating Artifact Registry repository $AR_REPOSITORY in $REGION"
    gc artifacts repositories create "$AR_REPOSITORY" --location="$REGION" --repository-format=docker \
      --description="Podium daemon images"
  fi
  # `--tag` builds ./Dockerfile of the uploaded context: stage exactly what the image needs, with
  # deploy/Dockerfile at the root (tests, bench, testdata and .venv are never uploaded).
  local ctx="$WORK_DIR/context"
  mkdir -p "$ctx"
  cp -R "$REPO_ROOT/daemon" "$REPO_ROOT/cli" "$REPO_ROOT/devtools" "$REPO_ROOT/machines" "$REPO_ROOT/handlers" "$REPO_ROOT/pyproject.toml" "$ctx/"
  if [[ -f "$REPO_ROOT/README.md" ]]; then
    cp "$REPO_ROOT/README.md" "$ctx/"
  fi
  cp "$HERE/Dockerfile" "$ctx/Dockerfile"
  rm -rf "$ctx/cli/example"  # podium up's embedded example: not needed to serve
  find "$ctx" -name __pycache__ -type d -prune -exec rm -rf {} +
  log "building $IMAGE with Cloud Build"
  gc builds submit "$ctx" --tag="$IMAGE"
}

# render_spec SRC DST: the service spec with PROJECT_ID, REGION and IMAGE substituted.
render_spec() {
  sed -e "s|PROJECT_ID|${PROJECT_ID}|g" -e "s|REGION|${REGION}|g" -e "s|IMAGE|${IMAGE}|g" "$1" >"$2"
  if grep -nE '(^|[^A-Za-z_])(PROJECT_ID|REGION|IMAGE)([^A-Za-z_]|$)' "$2" >&2; then
    die "placeholders left in the rendered $1"
  fi
}

step_deploy() {
  local rendered
  rendered="$WORK_DIR/$(basename "$SPEC")"
  render_spec "$SPEC" "$rendered"
  log "deploying $SERVICE ($MODE mode) with image $IMAGE"
  gc run services replace "$rendered" --region="$REGION"
  if [[ "$MODE" == "push" ]]; then
    # Only the push identity may invoke the service (no allUsers).
    retry gc run services add-iam-policy-binding "$SERVICE" --region="$REGION" \
      --member="serviceAccount:$PUSH_SA" --role=roles/run.invoker >/dev/null
    local url
    url="$(gc run services describe "$SERVICE" --region="$REGION" --format='value(status.url)')"
    [[ -n "$url" ]] || die "cannot read the URL of $SERVICE"
    ensure_daemon_subscriptions "${url}/pubsub/push"
  fi
  log "done: $SERVICE runs $IMAGE in $REGION ($MODE mode)"
}

cd "$REPO_ROOT"
log "project $PROJECT_ID, region $REGION, mode $MODE, steps $STEPS"
want apis && step_apis
want accounts && step_accounts
want pubsub && step_pubsub
want firestore && step_firestore
want indexes && step_indexes
want build && step_build
want deploy && step_deploy
exit 0
