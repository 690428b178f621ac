package dev.mdexport.core

import dev.mdexport.core.TestSupport.assertThrows
import java.io.File
import java.nio.file.Files
import org.junit.After
import org.junit.Assert.assertEquals
import org.junit.Assert.assertTrue
import org.junit.Test

class BundleTest {
    private val dir: File = Files.createTempDirectory("bundle-test").toFile()

    @After fun cleanUp() { dir.deleteRecursively() }

    private fun writeBundle(manifest: String = TestSupport.manifestText()) {
        File(dir, "manifest.json").writeText(manifest)
        File(dir, "tokenizer").mkdirs()
        TestSupport.tokenizerDir().resolve("vocab.json").copyTo(File(dir, "tokenizer/vocab.json"))
        TestSupport.tokenizerDir().resolve("merges.txt").copyTo(File(dir, "tokenizer/merges.txt"))
        File(dir, "scheduler.json").writeText("""{"_class_name": "EulerDiscreteScheduler", "beta_schedule": "scaled_linear"}""")
        for (f in listOf("text_encoder.tflite", "unet.tflite", "vae_decoder.tflite")) File(dir, f).writeBytes(ByteArray(16))
    }

    /** The fixture records real-size byte counts; point them at the 16-byte stand-ins. */
    private fun smallManifest() = TestSupport.manifestText().replace(Regex("\"bytes\": \\d+"), "\"bytes\": 16")

    @Test fun opensACompleteBundle() {
        writeBundle(smallManifest())
        val b = Bundle.open(DirectoryBundleFiles(dir))
        assertEquals("euler", b.manifest.pipeline.scheduler)
        assertEquals(49406, b.tokenizer.encode("hi")[0])
        assertEquals("EulerDiscreteScheduler", b.schedulerConfig.className)
    }

    @Test fun missingManifestSaysWhatToCopy() {
        val e = assertThrows<BundleException> { Bundle.open(DirectoryBundleFiles(dir)) }
        assertEquals("${dir.path}/manifest.json not found: copy md-export's out/tflite/ folder to ${dir.path}", e.message)
    }

    @Test fun missingModelFileIsNamed() {
        writeBundle(smallManifest())
        File(dir, "unet.tflite").delete()
        val e = assertThrows<BundleException> { Bundle.open(DirectoryBundleFiles(dir)) }
        assertEquals("${dir.path}/unet.tflite not found (models.unet.file in manifest.json)", e.message)
    }

    @Test fun truncatedModelFileIsDetected() {
        writeBundle() // manifest says 3438000000 bytes for unet.tflite
        val e = assertThrows<BundleException> { Bundle.open(DirectoryBundleFiles(dir)) }
        assertTrue(e.message, e.message!!.contains("is 16 bytes but manifest.json says"))
    }

    @Test fun wrongSchemaVersionNamesTheFile() {
        writeBundle(smallManifest().replace("\"schema_version\": 1", "\"schema_version\": 3"))
        val e = assertThrows<BundleException> { Bundle.open(DirectoryBundleFiles(dir)) }
        assertTrue(e.message, e.message!!.startsWith("${dir.path}/manifest.json: schema_version 3 is not supported"))
    }

    @Test fun missingTokenizerFileIsNamed() {
        writeBundle(smallManifest())
        File(dir, "tokenizer/merges.txt").delete()
        val e = assertThrows<BundleException> { Bundle.open(DirectoryBundleFiles(dir)) }
        assertEquals("${dir.path}/tokenizer/merges.txt not found", e.message)
    }
}
