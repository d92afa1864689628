// Package pki issues the certificates and kubeconfigs of the lab's control
// plane: one self-signed CA, a serving certificate for kube-apiserver,
// client certificates for each component and user, and the service-account
// signing key. Everything is written as PEM files into one directory.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// validity is how long lab certificates are valid; a lab lives for hours.
const validity = 365 * 24 * time.Hour

// CA is a certificate authority whose key and certificate live in Dir.
type CA struct {
	Dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

// CertFile is the path of the CA certificate.
func (ca *CA) CertFile() string { return filepath.Join(ca.Dir, "ca.crt") }

// LoadOrCreateCA loads the CA in dir, or creates it when dir holds none.
func LoadOrCreateCA(dir string) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating PKI directory: %w", err)
	}
	ca := &CA{Dir: dir}
	cert, key, err := loadPair(filepath.Join(dir, "ca"))
	if err == nil {
		ca.cert, ca.key = cert, key
		return ca, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("loading CA: %w", err)
	}
	key, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generating CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "nettrace-lab-ca"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("signing CA certificate: %w", err)
	}
	if err := writePair(filepath.Join(dir, "ca"), der, key); err != nil {
		return nil, err
	}
	ca.cert, _ = x509.ParseCertificate(der)
	ca.key = key
	return ca, nil
}

// Request describes a certificate to issue.
type Request struct {
	// Name is the file stem: Name.crt and Name.key in the CA's directory.
	Name string
	// CommonName and Organizations become the Kubernetes user and groups.
	CommonName    string
	Organizations []string
	// Server makes a serving certificate for the given IPs and DNS names.
	Server   bool
	IPs      []net.IP
	DNSNames []string
}

// Pair is an issued certificate and its key, as file paths.
type Pair struct {
	CertFile string
	KeyFile  string
}

// Issue signs a certificate for r, or returns the one already issued under
// r.Name.
func (ca *CA) Issue(r Request) (Pair, error) {
	stem := filepath.Join(ca.Dir, r.Name)
	pair := Pair{CertFile: stem + ".crt", KeyFile: stem + ".key"}
	if _, _, err := loadPair(stem); err == nil {
		return pair, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Pair{}, fmt.Errorf("generating key for %s: %w", r.Name, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: r.CommonName, Organization: r.Organizations},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		IPAddresses:  r.IPs,
		DNSNames:     r.DNSNames,
	}
	if r.Server {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return Pair{}, fmt.Errorf("signing certificate %s: %w", r.Name, err)
	}
	if err := writePair(stem, der, key); err != nil {
		return Pair{}, err
	}
	return pair, nil
}

// ServiceAccountKey writes (once) the key that signs service-account tokens
// and returns its path; the same PEM file serves as public and private key.
func (ca *CA) ServiceAccountKey() (string, error) {
	path := filepath.Join(ca.Dir, "sa.key")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", fmt.Errorf("generating service-account key: %w", err)
	}
	if err := writeKey(path, key); err != nil {
		return "", err
	}
	return path, nil
}

// WriteKubeconfig writes a kubeconfig at path that reaches server with the
// client certificate p, trusting the CA.
func (ca *CA) WriteKubeconfig(path, server, user string, p Pair) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["nettrace-lab"] = &clientcmdapi.Cluster{Server: server, CertificateAuthority: ca.CertFile()}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificate: p.CertFile, ClientKey: p.KeyFile}
	cfg.Contexts["nettrace-lab"] = &clientcmdapi.Context{Cluster: "nettrace-lab", AuthInfo: user}
	cfg.CurrentContext = "nettrace-lab"
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		return fmt.Errorf("writing kubeconfig %s: %w", path, err)
	}
	return nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 126))
	return n
}

func loadPair(stem string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	certPEM, err := os.ReadFile(stem + ".crt")
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := os.ReadFile(stem + ".key")
	if err != nil {
		return nil, nil, err
	}
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, nil, fmt.Errorf("%s: not PEM", stem)
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s.crt: %w", stem, err)
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("%s.key: %w", stem, err)
	}
	return cert, key, nil
}

func writePair(stem string, der []byte, key *ecdsa.PrivateKey) error {
	if err := writeKey(stem+".key", key); err != nil {
		return err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.WriteFile(stem+".crt", certPEM, 0o644); err != nil {
		return fmt.Errorf("writing %s.crt: %w", stem, err)
	}
	return nil
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return fmt.Errorf("encoding key %s: %w", path, err)
	}
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	if err := os.WriteFile(path, keyPEM, 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
