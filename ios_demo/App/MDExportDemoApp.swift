import SwiftUI

@main
struct MDExportDemoApp: App {
    var body: some Scene {
        WindowGroup {
            ContentView()
        }
    }
}
