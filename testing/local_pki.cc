#include "testing/local_pki.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>

#include "absl/strings/str_cat.h"

namespace tessera {

absl::StatusOr<LocalPki> MakeLocalPki(const std::string& dir, const std::string& name) {
  if (std::system("command -v openssl >/dev/null 2>&1") != 0) {
    return absl::FailedPreconditionError(
        "the openssl command is not installed (tools/setup.sh installs it)");
  }
  const std::string log = dir + "/openssl.log";
  {
    std::ofstream ext(dir + "/node.ext");
    ext << "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n"
        << "extendedKeyUsage=serverAuth,clientAuth\n"
        << "basicConstraints=critical,CA:FALSE\n"
        << "keyUsage=critical,digitalSignature,keyEncipherment\n";
  }
  const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
  const std::pair<const char*, std::string> steps[] = {
      {"the CA", absl::StrCat("openssl req -x509 ", ec, " -days 2 -subj '/CN=", name,
                              " local CA' -addext basicConstraints=critical,CA:TRUE ",
                              "-addext keyUsage=critical,keyCertSign,cRLSign -keyout '", dir,
                              "/ca.key' -out '", dir, "/ca.pem'")},
      {"the certificate request",
       absl::StrCat("openssl req ", ec, " -subj '/CN=", name, " node' -keyout '", dir,
                    "/node.key' -out '", dir, "/node.csr'")},
      {"the certificate", absl::StrCat("openssl x509 -req -days 2 -in '", dir, "/node.csr' -CA '",
                                       dir, "/ca.pem' -CAkey '", dir, "/ca.key' -CAcreateserial ",
                                       "-extfile '", dir, "/node.ext' -out '", dir, "/node.pem'")},
  };
  // An existing CA in `dir` stays: a new certificate from it (rotation).
  const bool have_ca = ::access((dir + "/ca.pem").c_str(), R_OK) == 0 &&
                       ::access((dir + "/ca.key").c_str(), R_OK) == 0;
  for (const auto& [what, command] : steps) {
    if (have_ca && std::string(what) == "the CA") continue;
    if (std::system(absl::StrCat(command, " >>'", log, "' 2>&1").c_str()) != 0) {
      return absl::InternalError(
          absl::StrCat("openssl could not make ", what, " (its output: ", log, ")"));
    }
  }
  ::chmod((dir + "/ca.key").c_str(), 0600);
  ::chmod((dir + "/node.key").c_str(), 0600);
  return LocalPki{dir + "/ca.pem", dir + "/node.pem", dir + "/node.key"};
}

}  // namespace tessera
