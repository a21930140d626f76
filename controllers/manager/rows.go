package manager

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers"
	"github.com/tallyhq/tally/workers/insights"
	"github.com/tallyhq/tally/workers/worker"
)

// rowsSecretRecheck is how often the database Secret is read again, so a changed URL reaches the
// manager without a restart and a busy reconciler does not read it on every pass.
const rowsSecretRecheck = time.Minute

// rowsMaxConns is the pool's size: the status's counts and tenant logins of a few reconciles
// at once (--max-concurrent-reconciles).
const rowsMaxConns = 8

// tenantRows answers controllers.TenantRows from the database the manager's database Secret names,
// through the worker package, which owns the schema and its SQL.
type tenantRows struct {
	reader  client.Reader
	secret  types.NamespacedName
	key     string
	mu      sync.Mutex
	url     string
	pool    *pgxpool.Pool
	checked time.Time
}

func newTenantRows(reader client.Reader, namespace, name, key string) *tenantRows {
	return &tenantRows{reader: reader, secret: types.NamespacedName{Namespace: namespace, Name: name}, key: key}
}

// UnnamedAccounts counts the tenant's accounts without a name.
func (t *tenantRows) UnnamedAccounts(ctx context.Context, tenant string) (int64, error) {
	pool, err := t.currentPool(ctx)
	if err != nil {
		return 0, err
	}
	return worker.UnnamedAccounts(ctx, pool, tenant)
}

// Insights reads how the source's insight pushes went (package insights owns that SQL).
func (t *tenantRows) Insights(ctx context.Context, tenant, source string) (controllers.InsightsRecord, bool, error) {
	pool, err := t.currentPool(ctx)
	if err != nil {
		return controllers.InsightsRecord{}, false, err
	}
	s, found, err := insights.ReadStatus(ctx, pool, tenant, source)
	if err != nil || !found {
		return controllers.InsightsRecord{}, found, err
	}
	return controllers.InsightsRecord{LastAttemptAt: s.LastAttemptAt, LastPushAt: s.LastPushAt,
		EntitiesPushed: s.EntitiesPushed, LastError: s.LastError}, true, nil
}

// Catalog summarises the tenant's event catalog as of now.
func (t *tenantRows) Catalog(ctx context.Context, tenant string) (tallyv1.CatalogStatus, error) {
	pool, err := t.currentPool(ctx)
	if err != nil {
		return tallyv1.CatalogStatus{}, err
	}
	s, err := worker.SummarizeCatalog(ctx, pool, tenant, time.Now())
	return tallyv1.CatalogStatus{Events: s.Events, Ignored: s.Ignored, SeenLastDay: s.SeenLastDay}, err
}

// currentPool is a small pool on the Secret's URL, made again when the URL changes.
func (t *tenantRows) currentPool(ctx context.Context) (*pgxpool.Pool, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.pool != nil && time.Since(t.checked) < rowsSecretRecheck {
		return t.pool, nil
	}
	secret := &corev1.Secret{}
	if err := t.reader.Get(ctx, t.secret, secret); err != nil {
		return nil, fmt.Errorf("database Secret %s: %w", t.secret, err)
	}
	t.checked = time.Now()
	url := string(secret.Data[t.key])
	if t.pool != nil && url == t.url {
		return t.pool, nil
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("database Secret %s: the URL does not parse", t.secret) // never the URL: it holds a password
	}
	cfg.MaxConns = rowsMaxConns
	// The manager migrates the schema: tenants' logins cannot.
	if err := worker.Migrate(ctx, url); err != nil {
		return nil, fmt.Errorf("database Secret %s: %w", t.secret, err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, err
	}
	if t.pool != nil {
		t.pool.Close()
	}
	t.pool, t.url = pool, url
	return pool, nil
}
