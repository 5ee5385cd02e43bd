import Dispatch

/// Runs blocking work (file hashing, large local I/O) on a dispatch thread instead of Swift's cooperative pool,
/// which has only as many threads as cores and stalls every task while one of them blocks.
public func runBlocking<T: Sendable, E: Error>(_ work: @escaping @Sendable () throws(E) -> T) async throws(E) -> T {
    let result: Result<T, E> = await withCheckedContinuation { continuation in
        DispatchQueue.global().async {
            do throws(E) {
                continuation.resume(returning: .success(try work()))
            } catch {
                continuation.resume(returning: .failure(error))
            }
        }
    }
    return try result.get()
}
