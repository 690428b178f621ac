package dev.mdexport.core

import java.io.File
import org.junit.Assert.assertEquals
import org.junit.Assert.fail

object TestSupport {
    fun resource(path: String): String {
        val stream = TestSupport::class.java.getResourceAsStream("/$path") ?: error("test resource /$path not on the classpath")
        return stream.use { it.readBytes().toString(Charsets.UTF_8) }
    }

    fun golden(name: String): JsonObject = Json.parseObject(resource("goldens/$name.json"), "goldens/$name.json")

    fun manifestText(): String = resource("fixtures/manifest_sd15_tflite.json")

    /** The committed real CLIP tokenizer: -Dmdexport.tokenizerDir, else found from the working directory upwards. */
    fun tokenizerDir(): File {
        System.getProperty("mdexport.tokenizerDir")?.let { return File(it) }
        var dir: File? = File("").absoluteFile
        while (dir != null) {
            val candidate = File(dir, "src/md_export/default_model/tokenizer")
            if (File(candidate, "vocab.json").isFile) return candidate
            dir = dir.parentFile
        }
        error("cannot find src/md_export/default_model/tokenizer; pass -Dmdexport.tokenizerDir")
    }

    val realTokenizer: ClipTokenizer by lazy {
        val d = tokenizerDir()
        ClipTokenizer.fromText(File(d, "vocab.json").readText(), File(d, "merges.txt").readText())
    }

    /** |a - b| <= tol * max(1, |b|): absolute near zero, relative for large values (sigmas reach ~15, Euler latents ~150). */
    fun assertClose(msg: String, expected: Double, actual: Double, tol: Double = 1e-5) {
        val bound = tol * maxOf(1.0, Math.abs(expected))
        if (!(Math.abs(expected - actual) <= bound)) fail("$msg: expected $expected, got $actual (tolerance $bound)")
    }

    fun assertAllClose(msg: String, expected: List<Double>, actual: DoubleArray, tol: Double = 1e-5) {
        assertEquals("$msg: length", expected.size, actual.size)
        for (i in expected.indices) assertClose("$msg[$i]", expected[i], actual[i], tol)
    }

    inline fun <reified T : Throwable> assertThrows(block: () -> Unit): T {
        try {
            block()
        } catch (e: Throwable) {
            if (e is T) return e
            throw AssertionError("expected ${T::class.java.simpleName}, got $e", e)
        }
        throw AssertionError("expected ${T::class.java.simpleName}, nothing was thrown")
    }
}
