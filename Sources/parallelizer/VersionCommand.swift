import ArgumentParser
import AWSCore
import HTTPCurl

struct VersionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "version", abstract: "Print the version and the libcurl and OpenSSL versions.")

    func run() {
        print("parallelizer \(Version.current)")
        print("libcurl: \(HTTPClient.curlVersion)")
        print("openssl: \(Digest.openSSLVersion)")
    }
}
