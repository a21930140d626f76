package controllers_test

import (
	"context"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/controller-runtime/pkg/client"

	tallyv1 "github.com/tallyhq/tally/api/v1alpha1"
	"github.com/tallyhq/tally/controllers"
	"github.com/tallyhq/tally/controllers/manager"
	"github.com/tallyhq/tally/controllers/resources"
	"github.com/tallyhq/tally/workers/natsauth"
	"github.com/tallyhq/tally/workers/natsserver"
	"github.com/tallyhq/tally/workers/pool"
	"github.com/tallyhq/tally/workers/source"
	"github.com/tallyhq/tally/workers/stream"
)

const natsSigningKeySecret = "tally-nats-signing-key"

// natsUserCreds reads the creds the operator issued for a component of a source.
func natsUserCreds(s *tallyv1.SegmentSource, component string) func() []byte {
	return func() []byte {
		secret := &corev1.Secret{}
		if err := k8s.Get(ctx, types.NamespacedName{Namespace: s.Namespace, Name: resources.NATSUserSecretName(s, component)}, secret); err != nil {
			return nil
		}
		return secret.Data[controllers.NATSUserCredsKey]
	}
}

func natsUserIssuer(creds []byte) string {
	token, err := jwt.ParseDecoratedJWT(creds)
	if err != nil {
		return err.Error()
	}
	claims, err := jwt.DecodeUserClaims(token)
	if err != nil {
		return err.Error()
	}
	return claims.Issuer
}

// The suite's NATS server runs without auth (most specs need none); these specs give the manager
// the signing key of a JWT-mode embedded server of their own and attack that server with the
// credentials the operator wrote into the tenant namespaces.
var _ = Describe("per-source NATS users (--nats-account-signing-key-secret)", Serial, Ordered, func() {
	var (
		auth    *natsserver.Auth
		jwtSrv  *server.Server
		adminJS jetstream.JetStream
	)
	BeforeAll(func() {
		var err error
		auth, err = natsserver.NewAuth()
		Expect(err).NotTo(HaveOccurred())
		jwtSrv, err = natsserver.Start(natsserver.Options{StoreDir: GinkgoT().TempDir(), Auth: auth})
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(jwtSrv.Shutdown)
		adminCreds, err := natsauth.EmbeddedAdminCreds(auth)
		Expect(err).NotTo(HaveOccurred())
		opt, err := natsauth.CredsOption(adminCreds)
		Expect(err).NotTo(HaveOccurred())
		admin, err := nats.Connect(jwtSrv.ClientURL(), opt)
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(admin.Close)
		adminJS, err = jetstream.New(admin)
		Expect(err).NotTo(HaveOccurred())

		signingKey := &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: natsSigningKeySecret, Namespace: managerNamespace},
			StringData: map[string]string{"seed": auth.SigningKeySeed, "account": auth.AccountPublicKey()},
		}
		Expect(k8s.Create(ctx, signingKey)).To(Succeed())
		DeferCleanup(func() { Expect(client.IgnoreNotFound(k8s.Delete(ctx, signingKey))).To(Succeed()) })
		restartManager(func(o *manager.Options) {
			o.NATSSigningKeySecret = natsSigningKeySecret
			o.NATSSigningKeySecretKey = "seed"
			o.NATSUserTTL = 90 * 24 * time.Hour
		})
	})

	// attacker connects to the JWT-mode server as a component of a source would, with the creds
	// the operator wrote, recording the server's refusals.
	attacker := func(s *tallyv1.SegmentSource, component string, role natsauth.Role) (*nats.Conn, func() []string) {
		GinkgoHelper()
		opt, err := natsauth.CredsOption(natsUserCreds(s, component)())
		Expect(err).NotTo(HaveOccurred())
		errs := make(chan error, 100)
		nc, err := nats.Connect(jwtSrv.ClientURL(), opt, natsauth.InboxOption(stream.Source{Namespace: s.Namespace, Name: s.Name}, role),
			nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errs <- err }))
		Expect(err).NotTo(HaveOccurred())
		DeferCleanup(nc.Close)
		var seen []string
		return nc, func() []string {
			for {
				select {
				case err := <-errs:
					seen = append(seen, err.Error())
				default:
					return seen
				}
			}
		}
	}

	It("issues the receiver and the workers users of their own, mounts each only its own, and keeps them", func() {
		ns := newNamespace()
		s := createSource(newSource(ns, "acme-web"), true)
		key := client.ObjectKeyFromObject(s)
		Eventually(conditionOf(key, tallyv1.ConditionNATSIsolated)).Should(Equal("True/" + controllers.ReasonPerSourceNATSUsers))
		owner := metav1.OwnerReference{APIVersion: "tally.dev/v1alpha1", Kind: "SegmentSource", Name: s.Name,
			UID: getSource(key).UID, Controller: ptr.To(true), BlockOwnerDeletion: ptr.To(true)}

		for _, c := range []struct{ component, other string }{
			{resources.ComponentReceiver, resources.ComponentWorker},
			{resources.ComponentWorker, resources.ComponentReceiver},
		} {
			secret := &corev1.Secret{}
			Expect(k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: resources.NATSUserSecretName(s, c.component)}, secret)).To(Succeed())
			Expect(secret.OwnerReferences).To(ConsistOf(owner), "deleted with the source")
			Expect(natsUserIssuer(secret.Data[controllers.NATSUserCredsKey])).To(Equal(signingPublicKey(auth)))

			dep := deployment(ns, s.Name+"-"+c.component)
			pod := dep.Spec.Template.Spec
			Expect(pod.Containers[0].Args).To(ContainElement("--nats-creds=/etc/tally/nats/nats.creds"))
			var mounted []string
			for _, v := range pod.Volumes {
				if v.Secret != nil {
					mounted = append(mounted, v.Secret.SecretName)
				}
			}
			Expect(mounted).To(ContainElement(resources.NATSUserSecretName(s, c.component)))
			Expect(mounted).NotTo(ContainElement(resources.NATSUserSecretName(s, c.other)))
			Expect(mounted).NotTo(ContainElement(resources.NATSCredsSecretCopyName(s)))
			Expect(dep.Spec.Template.Annotations).To(HaveKeyWithValue(resources.AnnotationNATSCredsHash,
				resources.Hash(map[string][]byte{controllers.NATSUserCredsKey: secret.Data[controllers.NATSUserCredsKey]})))
		}

		By("keeping the users across periodic reconciles (no re-issue, no rollout)")
		receiverCreds := natsUserCreds(s, resources.ComponentReceiver)()
		Consistently(natsUserCreds(s, resources.ComponentReceiver), 3*testRequeueInterval).Should(Equal(receiverCreds))

		By("staying Ready: isolation is reported, not required")
		makeAllAvailable(s)
		Eventually(readyReason(key)).Should(Equal("True/" + controllers.ReasonSucceeded))
		got := getSource(key)
		Expect(kstatusOf(got)).To(Equal(status.CurrentStatus))
		expectStatusCompliant(got)
	})

	It("issues users that reach their own source only", func() {
		ns, otherNS := newNamespace(), newNamespace()
		mine := createSource(newSource(ns, "web"), true)
		theirs := createSource(newSource(otherNS, "app"), true)
		for _, s := range []*tallyv1.SegmentSource{mine, theirs} {
			Eventually(conditionOf(client.ObjectKeyFromObject(s), tallyv1.ConditionNATSIsolated)).Should(Equal("True/" + controllers.ReasonPerSourceNATSUsers))
			// The manager's streams live on the suite's server; make the same ones here.
			Expect(stream.Ensure(ctx, adminJS, streamSourceOf(s), stream.Settings{})).To(Succeed())
		}
		mySrc, theirSrc := streamSourceOf(mine), streamSourceOf(theirs)

		rc, rerrs := attacker(mine, resources.ComponentReceiver, natsauth.Receiver)
		rjs, err := jetstream.New(rc, jetstream.WithDefaultTimeout(time.Second))
		Expect(err).NotTo(HaveOccurred())
		_, err = rjs.Publish(ctx, mySrc.Subject("track"), []byte(`{}`))
		Expect(err).NotTo(HaveOccurred(), "its own subject")
		_, err = rjs.Publish(ctx, theirSrc.Subject("track"), []byte(`{}`))
		Expect(err).To(HaveOccurred())
		_, err = rjs.Consumer(ctx, theirSrc.StreamName(), stream.WorkerConsumer)
		Expect(err).To(HaveOccurred())
		Expect(rjs.DeleteStream(ctx, theirSrc.StreamName())).NotTo(Succeed())
		Eventually(func() []string { return rerrs() }).Should(ContainElements(
			ContainSubstring(`Publish to "`+theirSrc.Subject("track")+`"`),
			ContainSubstring(`Publish to "$JS.API.CONSUMER.INFO.`+theirSrc.StreamName()+`.workers"`),
			ContainSubstring(`Publish to "$JS.API.STREAM.DELETE.`+theirSrc.StreamName()+`"`)))

		wc, werrs := attacker(mine, resources.ComponentWorker, natsauth.Worker)
		wjs, err := jetstream.New(wc, jetstream.WithDefaultTimeout(time.Second))
		Expect(err).NotTo(HaveOccurred())
		_, err = wjs.Consumer(ctx, mySrc.StreamName(), stream.WorkerConsumer)
		Expect(err).NotTo(HaveOccurred(), "its own consumer")
		_, err = wjs.Consumer(ctx, theirSrc.StreamName(), stream.WorkerConsumer)
		Expect(err).To(HaveOccurred())
		Expect(wjs.DeleteStream(ctx, mySrc.StreamName())).NotTo(Succeed())
		Eventually(func() []string { return werrs() }).Should(ContainElements(
			ContainSubstring(`Publish to "$JS.API.CONSUMER.INFO.`+theirSrc.StreamName()+`.workers"`),
			ContainSubstring(`Publish to "$JS.API.STREAM.DELETE.`+mySrc.StreamName()+`"`)))
		for _, name := range []string{mySrc.StreamName(), theirSrc.StreamName()} {
			_, err := adminJS.Stream(ctx, name)
			Expect(err).NotTo(HaveOccurred(), "stream %s still there", name)
		}
	})

	It("issues a pool's receiver and workers users that read their pool's bucket, mounted each in its own pods", func() {
		platform := newNamespace()
		p := createPool(platform, "shared", tallyv1.SegmentSourcePoolSpec{})
		ref := pool.Ref{Namespace: platform, Name: "shared"}
		for _, c := range []struct {
			component string
			role      natsauth.Role
		}{{resources.ComponentReceiver, natsauth.Receiver}, {resources.ComponentWorker, natsauth.Worker}} {
			name := resources.PoolNATSUserSecretName(p, c.component)
			secret := &corev1.Secret{}
			Eventually(func() error { return k8s.Get(ctx, types.NamespacedName{Namespace: platform, Name: name}, secret) }).Should(Succeed())
			creds := secret.Data[controllers.NATSUserCredsKey]
			Expect(natsUserIssuer(creds)).To(Equal(signingPublicKey(auth)))
			Eventually(func() []string {
				var mounted []string
				d := &appsv1.Deployment{}
				if err := k8s.Get(ctx, types.NamespacedName{Namespace: platform, Name: "shared-" + c.component}, d); err != nil {
					return nil
				}
				for _, v := range d.Spec.Template.Spec.Volumes {
					if v.Secret != nil {
						mounted = append(mounted, v.Secret.SecretName)
					}
				}
				return mounted
			}).Should(And(ContainElement(name), Not(ContainElement(resources.PoolNATSUserSecretName(p, map[string]string{
				resources.ComponentReceiver: resources.ComponentWorker, resources.ComponentWorker: resources.ComponentReceiver}[c.component])))))

			By("the " + c.component + "'s user watching the pool's bucket on the JWT-mode server")
			kv, err := pool.EnsureBucket(ctx, adminJS, ref, 1)
			Expect(err).NotTo(HaveOccurred())
			_, err = pool.Put(ctx, kv, pool.Member{Source: source.Config{Namespace: "team", Name: "web", Tenant: "acme"},
				WriteKeyDigests: []string{pool.DigestKey("k")}})
			Expect(err).NotTo(HaveOccurred())
			opt, err := natsauth.CredsOption(creds)
			Expect(err).NotTo(HaveOccurred())
			nc, err := nats.Connect(jwtSrv.ClientURL(), opt, natsauth.PoolInboxOption(ref, c.role))
			Expect(err).NotTo(HaveOccurred())
			DeferCleanup(nc.Close)
			js, err := jetstream.New(nc)
			Expect(err).NotTo(HaveOccurred())
			bucket, err := js.KeyValue(ctx, ref.Bucket())
			Expect(err).NotTo(HaveOccurred())
			wctx, cancel := context.WithCancel(ctx)
			got := make(chan map[string]pool.Member, 1)
			go func() {
				_ = pool.Watch(wctx, bucket, func(m map[string]pool.Member) {
					select {
					case got <- m:
					default:
					}
				}, nil)
			}()
			Eventually(got).Should(Receive(HaveKey("team.web")))
			cancel()
		}
	})

	It("re-issues every user when the signing key is rotated, rolling the pods", func() {
		ns := newNamespace()
		s := createSource(newSource(ns, "rotate"), true)
		key := client.ObjectKeyFromObject(s)
		Eventually(conditionOf(key, tallyv1.ConditionNATSIsolated)).Should(Equal("True/" + controllers.ReasonPerSourceNATSUsers))
		before := deployment(ns, resources.WorkerName(s)).Spec.Template.Annotations[resources.AnnotationNATSCredsHash]

		next, err := natsserver.NewAuth()
		Expect(err).NotTo(HaveOccurred())
		secret := &corev1.Secret{}
		Expect(k8s.Get(ctx, types.NamespacedName{Namespace: managerNamespace, Name: natsSigningKeySecret}, secret)).To(Succeed())
		secret.Data["seed"] = []byte(next.SigningKeySeed) // a new signing key of the same account
		Expect(k8s.Update(ctx, secret)).To(Succeed())

		for _, component := range []string{resources.ComponentReceiver, resources.ComponentWorker} {
			Eventually(func() string { return natsUserIssuer(natsUserCreds(s, component)()) }).Should(Equal(signingPublicKey(next)))
		}
		Eventually(func() string {
			return deployment(ns, resources.WorkerName(s)).Spec.Template.Annotations[resources.AnnotationNATSCredsHash]
		}).ShouldNot(Equal(before))
	})
})

var _ = Describe("sources without NATS users of their own", func() {
	It("are warned with NATSIsolated=False NoNATSAuth when NATS has no auth, and stay Ready", func() {
		ns := newNamespace()
		s := createSource(newSource(ns, "open"), true)
		key := client.ObjectKeyFromObject(s)
		Eventually(conditionOf(key, tallyv1.ConditionNATSIsolated)).Should(Equal("False/" + controllers.ReasonNoNATSAuth))
		makeAllAvailable(s)
		Eventually(readyReason(key)).Should(Equal("True/" + controllers.ReasonSucceeded))
		Expect(kstatusOf(getSource(key))).To(Equal(status.CurrentStatus))
	})

	Context("with the manager's static credentials (--nats-creds-secret)", Serial, Ordered, func() {
		BeforeAll(func() {
			static := &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: "tally-nats-static", Namespace: managerNamespace},
				StringData: map[string]string{"nats.creds": "-----BEGIN NATS USER JWT-----"},
			}
			Expect(k8s.Create(ctx, static)).To(Succeed())
			DeferCleanup(func() { Expect(client.IgnoreNotFound(k8s.Delete(ctx, static))).To(Succeed()) })
			restartManager(func(o *manager.Options) { o.NATSCredsSecret = "tally-nats-static" })
		})

		It("mounts the shared copy, warns with SharedNATSCredentials and stays Ready", func() {
			ns := newNamespace()
			s := createSource(newSource(ns, "shared"), true)
			key := client.ObjectKeyFromObject(s)
			Eventually(conditionOf(key, tallyv1.ConditionNATSIsolated)).Should(Equal("False/" + controllers.ReasonSharedNATSCredentials))
			c := condition(getSource(key), tallyv1.ConditionNATSIsolated)
			Expect(c.Message).To(ContainSubstring("--nats-account-signing-key-secret"))
			for _, name := range []string{resources.ReceiverName(s), resources.WorkerName(s)} {
				Expect(deployment(ns, name).Spec.Template.Spec.Volumes).To(ContainElement(
					HaveField("VolumeSource.Secret.SecretName", resources.NATSCredsSecretCopyName(s))))
			}
			Expect(notFound(k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: resources.NATSUserSecretName(s, resources.ComponentReceiver)}, &corev1.Secret{}))).To(BeTrue())
			makeAllAvailable(s)
			Eventually(readyReason(key)).Should(Equal("True/" + controllers.ReasonSucceeded))
			got := getSource(key)
			Expect(kstatusOf(got)).To(Equal(status.CurrentStatus))
			expectStatusCompliant(got)
		})
	})
})

func streamSourceOf(s *tallyv1.SegmentSource) stream.Source {
	return stream.Source{Namespace: s.Namespace, Name: s.Name}
}

func signingPublicKey(a *natsserver.Auth) string {
	GinkgoHelper()
	issuer, err := natsauth.EmbeddedIssuer(a)
	Expect(err).NotTo(HaveOccurred())
	return issuer.SigningKey()
}
