package deploy_test

import (
	rbacv1 "k8s.io/api/rbac/v1"

	. "github.com/onsi/ginkgo/v2"
	. "github.com/onsi/gomega"
)

var _ = Describe("the chart with per-source NATS users (nats.accountSigningKeySecret)", func() {
	It("gives the manager the signing key and keeps the account's full credentials for the manager alone", func() {
		rendered := parseObjects(mustHelmTemplate(defaultNamespace,
			"--set", "watchNamespace="+watchedNamespace,
			"--set", "nats.credsSecret=tally-nats",
			"--set", "nats.accountSigningKeySecret=tally-nats-signing-key",
			"--set", "nats.account=ABJHLOVMPA4CI6R5KLNGOB4GSLNIY7IOUPAJC4YFNDLQVIOBYQGUWVLA",
			"--set", "nats.userTTL=720h"))
		args := deployment(rendered).Spec.Template.Spec.Containers[0].Args
		Expect(args).To(ContainElements(
			"--nats-creds=/var/run/secrets/tally/nats/nats.creds",
			"--nats-account-signing-key-secret=tally-nats-signing-key",
			"--nats-account-signing-key-secret-key=seed",
			"--nats-account=ABJHLOVMPA4CI6R5KLNGOB4GSLNIY7IOUPAJC4YFNDLQVIOBYQGUWVLA",
			"--nats-user-ttl=720h"))
		Expect(args).NotTo(ContainElement(HavePrefix("--nats-creds-secret")), "the full credentials are copied to no tenant")
		Expect(convert[rbacv1.Role](find(rendered, "Role", "tally-manager-secrets")).Rules[0].ResourceNames).To(
			ConsistOf("tally-database", "tally-nats", "tally-nats-signing-key"))
	})

	It("passes no signing key by default", func() {
		args := deployment(parseObjects(mustHelmTemplate(defaultNamespace))).Spec.Template.Spec.Containers[0].Args
		Expect(args).NotTo(ContainElement(HavePrefix("--nats-account")))
		Expect(args).NotTo(ContainElement(HavePrefix("--nats-user-ttl")))
	})
})
